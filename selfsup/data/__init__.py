"""Image sources (official formats, image folders and tarballs, ImageNet, tar shards, one image, digits) decoded once
into a uint8 (N,H,W,3) cache, in parallel and resumably for the large ones (build.py), and memory-mapped afterwards."""

from selfsup.data.sources import ImageArray, imbalanced, load_source, parse_source, subset

__all__ = ["ImageArray", "imbalanced", "load_source", "parse_source", "subset"]
