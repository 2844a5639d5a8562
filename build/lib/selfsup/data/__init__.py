"""Image sources decoded once into a uint8 (N,H,W,3) cache and memory-mapped afterwards."""

from selfsup.data.sources import ImageArray, imbalanced, load_source, parse_source, subset

__all__ = ["ImageArray", "imbalanced", "load_source", "parse_source", "subset"]
