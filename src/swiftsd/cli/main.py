"""`swiftsd` command line: one dispatcher, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``.
Every error swiftsd raises on purpose becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
import warnings
from typing import Any

from ..errors import SlowDtypeWarning, SwiftSDError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("swiftsd.cli.generate", "generate text with SWIFT (optionally --compare with plain decoding)"),
    "tune": ("swiftsd.cli.tune", "run a prompt stream with the optimizer on and store the tuned skip set"),
    "bench": ("swiftsd.cli.bench", "measure speed-up against plain decoding and peers on Spec-Bench-style data"),
    "serve": ("swiftsd.cli.serve", "OpenAI-compatible HTTP server"),
    "plot-trace": ("swiftsd.cli.trace", "draw a --trace JSON file as a PNG"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """One style for every command's help.

    - Option help wraps at spaces only: never inside a word ("translati on") or after a
      hyphen ("swift- paper"); a description keeps its own line breaks (lists).
    - Every option that takes a value states its default once, at the end, as
      "(default: X)": the value, or where it is None (nothing given) the help's own
      words for what happens then, e.g. "(default: cuda if available)".
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 26,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, width)

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default: " in text or not takes_value(action) or default is None or default == argparse.SUPPRESS:
            return text
        if isinstance(default, (list, tuple)):
            if not default:
                return text
            shown = ",".join(str(x) for x in default).replace("%", "%%")
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


def takes_value(action: argparse.Action) -> bool:
    """An option given with a value (``--top-k 5``), not a switch (``--json``) or a positional."""
    return bool(action.option_strings) and action.nargs != 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, import just that subcommand's module (fast start-up)."""
    parser = _Parser(prog="swiftsd", description="SWIFT on-the-fly self-speculative decoding",
                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"swiftsd {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if only is not None and name != only:
            continue
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def _warnings_as_lines(python_show: Any) -> Any:
    """A ``warnings.showwarning`` that prints swiftsd's own warnings as one "swiftsd: warning:" line,
    like its errors, and hands every other warning to ``python_show``."""

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if issubclass(category, SlowDtypeWarning):
            print(f"swiftsd: warning: {message}", file=sys.stderr)
        else:
            python_show(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warnings_as_lines(warnings.showwarning)
            return int(args._run(args) or 0)
    except SwiftSDError as exc:
        print(f"swiftsd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("swiftsd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
