"""kdgate: a serving gateway for distilled LLMs. The `kdgate` command lives in `kdgate.cli`."""

__version__ = "0.1.0"
