"""Image sources decoded once into a uint8 (N,H,W,3) cache and memory-mapped afterwards."""

from selfsup.data.sources import ImageArray, load_source, parse_source

__all__ = ["ImageArray", "load_source", "parse_source"]
