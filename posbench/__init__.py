"""posbench: positional-encoding length-extrapolation experiments."""

__version__ = "0.1.0"
