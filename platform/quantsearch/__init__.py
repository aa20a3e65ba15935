"""quantsearch: find how to quantize a CNN for a target, and prove it on real data."""

__version__ = "0.1.0"
