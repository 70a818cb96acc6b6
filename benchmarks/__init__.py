"""Benchmarks of Stable Codec against the original implementation and transformers' audio codecs (see README.md)."""
