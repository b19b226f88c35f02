"""Weights to codes: codebooks, the x0 search, quantization and bit packing."""
