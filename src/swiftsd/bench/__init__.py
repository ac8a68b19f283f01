"""The benchmark's parts: methods (swiftsd and its peers), prompts, the interleaved runner, metrics,
reports and resumable runs. The ``swiftsd bench`` command itself is ``swiftsd.cli.bench``."""
