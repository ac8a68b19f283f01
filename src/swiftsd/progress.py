"""Progress bars for swiftsd's long waits, and transformers' own bars folded into them.

A first load dequantises a GGUF file for up to a minute or two, and a plain
``--compare`` run decodes for as long again: without a bar both look hung.
Bars go to stderr (stdout stays the generated text) and only to a terminal, so
logs and captured test output get no carriage-return noise; ``SWIFTSD_PROGRESS=1``
forces them on, ``=0`` off.

transformers draws its own bars while loading ("Converting and de-quantizing
GGUF tensors...", "Loading weights", "Writing model shards"). :func:`hf_bars`
replaces them, for the length of a load, with one swiftsd bar or with nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Iterable, Iterator

from tqdm import tqdm

__all__ = ["PROGRESS_ENV", "Ticker", "bar", "enabled", "hf_bars"]

PROGRESS_ENV = "SWIFTSD_PROGRESS"


def enabled() -> bool:
    """Bars on a terminal only, unless $SWIFTSD_PROGRESS says otherwise."""
    env = os.environ.get(PROGRESS_ENV)
    if env is not None and env.strip():
        return env.strip().lower() not in ("0", "false", "no", "off")
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar(iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None, unit: str = "it",
        leave: bool = True) -> tqdm:
    """A swiftsd bar on stderr (a silent no-op bar when :func:`enabled` is false)."""
    return tqdm(iterable, desc=f"swiftsd: {desc}", total=total, unit=unit, leave=leave, file=sys.stderr,
                disable=not enabled(), dynamic_ncols=True)


class Ticker:
    """One self-updating status line for a wait made of stages that report no progress of their own.

    Reading a GGUF file's metadata, converting its tokenizer and saving the dense
    weights take tens of seconds each and tell nobody; the line names the stage and
    its elapsed time moves every second, so the wait never looks hung.
    """

    def __init__(self, desc: str, interval: float = 0.5) -> None:
        self.desc = f"swiftsd: {desc}"
        self.bar = tqdm(total=None, desc=self.desc, bar_format="{desc} [{elapsed}]", file=sys.stderr,
                        disable=not enabled(), leave=False, dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.bar.disable:
            self._thread = threading.Thread(target=self._tick, args=(interval,), daemon=True)
            self._thread.start()

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.bar.refresh()

    def stage(self, text: str, refresh: bool = True) -> None:
        """Show what is happening now (``refresh=False``: at the next tick, for fast-changing text)."""
        self.bar.set_description_str(f"{self.desc}: {text}", refresh=refresh)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()

    def __enter__(self) -> "Ticker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def hf_bars(ticker: Ticker | None = None, weights: str | None = None) -> Iterator[None]:
    """During a load, show transformers' bars as swiftsd's, or not at all.

    ``ticker``: where the GGUF dequantisation loop reports "tensor i/n" (hidden if None).
    ``weights``: the label of the "Loading weights" bar (hidden if None). Every other
    transformers bar (e.g. "Writing model shards") is hidden. Download bars of the
    hub client are left alone: a download is a wait worth seeing.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(_gguf_bar(ticker))
        stack.enter_context(_logging_bars(weights))
        yield


def _counting(iterable: Iterable[Any], ticker: Ticker) -> Iterator[Any]:
    items = list(iterable)
    for i, item in enumerate(items):
        ticker.stage(f"dequantising tensor {i + 1}/{len(items)}", refresh=False)
        yield item


@contextlib.contextmanager
def _gguf_bar(ticker: Ticker | None) -> Iterator[None]:
    """transformers' GGUF loader iterates tensors through ``tqdm.auto.tqdm``; count them on ours."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return

    def ours(iterable: Iterable[Any] | None = None, *args: Any, **kwargs: Any) -> Iterable[Any]:
        if ticker is None or iterable is None:
            return tqdm(iterable, disable=True)
        return _counting(iterable, ticker)

    gguf_utils.tqdm = ours
    try:
        yield
    finally:
        gguf_utils.tqdm = original


@contextlib.contextmanager
def _logging_bars(weights: str | None) -> Iterator[None]:
    """Route transformers' ``logging.tqdm`` bars through a hook (transformers >= 5.23 has one)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # older transformers: no hook, so silence its bars for the load
        was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if was_on:
                hf_logging.enable_progress_bar()
        return

    def hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if weights is not None and kwargs.get("desc") == "Loading weights":
            iterable = args[0] if args else kwargs.get("iterable")
            return bar(iterable, desc=f"loading {weights}", total=kwargs.get("total"), unit="tensor", leave=False)
        return tqdm(*args, **{**kwargs, "disable": True})

    previous = set_hook(hook)
    try:
        yield
    finally:
        set_hook(previous)
