"""The names and defaults ``swiftsd bench`` offers on its command line, in a module that imports nothing
heavy, so ``swiftsd bench --help`` needs neither torch nor the methods."""

from __future__ import annotations

METHOD_NAMES = ("plain", "swiftsd", "swift-paper", "lookup-only", "quant-draft", "pld", "swiftsd-static",
                "swiftsd-chain", "early-exit", "hf-assisted-int4", "hf-assisted-int8")
DEFAULT_METHODS = ("swiftsd", "swift-paper", "lookup-only", "pld")
NOISE_MARGIN = 0.15  # repeats of one turn further apart than this (slower / faster - 1) are flagged
