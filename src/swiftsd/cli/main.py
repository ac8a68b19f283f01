"""`swiftsd` command line: one dispatcher, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``.
Every error swiftsd raises on purpose becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Any

from ..errors import SlowDtypeWarning, SwiftSDError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("swiftsd.cli.generate", "generate text with SWIFT (optionally --compare with plain decoding)"),
    "tune": ("swiftsd.cli.tune", "run a prompt stream with the optimiser on and store the tuned skip set"),
    "bench": ("swiftsd.cli.bench", "measure speed-up against plain decoding and peers on Spec-Bench-style data"),
    "serve": ("swiftsd.cli.serve", "OpenAI-compatible HTTP server"),
    "plot-trace": ("swiftsd.cli.trace", "draw a --trace JSON file as a PNG"),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default, except the ones that would read "None" or "False".

    An option whose default is None means "not given": its help says in words what
    happens then (e.g. "default: cuda if available"), which "(default: None)" would not.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or "default" in text.lower():
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        if isinstance(default, (list, tuple)):
            if not default:
                return text
            shown = ",".join(str(x) for x in default).replace("%", "%%")
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


def _describe_defaults(parser: argparse.ArgumentParser) -> None:
    """argparse formats only options that have a help text: give the bare ones one, so
    the formatter can show their default too."""
    for action in parser._actions:
        if action.help is None and not any(action.default is x for x in (None, False, argparse.SUPPRESS)):
            action.help = "default: %(default)s"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, import just that subcommand's module (fast start-up)."""
    parser = _Parser(prog="swiftsd", description="SWIFT on-the-fly self-speculative decoding",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"swiftsd {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        if only is not None and name != only:
            continue
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        _describe_defaults(p)
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
