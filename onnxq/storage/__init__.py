"""The storage-format registry: a new format is one file plus one line here.

A format module satisfies storage.base.StorageFormat (and, if it stores whole weights
itself, WholeWeights); the pipeline reaches formats only through FORMATS.
"""

from __future__ import annotations

from onnxq.storage import fold, matmulnbits, qdq
from onnxq.storage.base import StorageFormat

FORMATS: dict[str, StorageFormat] = {
    "fold": fold,
    "qdq": qdq,
    "matmulnbits": matmulnbits,
}
DEFAULT_FORMAT = "fold"

# What each initializer suffix holds, for the report's byte breakdown.
INDICES_SUFFIX = ".onnxq.indices"
CODEBOOK_SUFFIXES = (".onnxq.codebook", ".onnxq.scale", ".onnxq.ranges", ".onnxq.offsets")
CODEBOOK_ATTRIBUTES = ("ranges", "offset")  # tensor attributes of a decoder call that hold levels

__all__ = [
    "CODEBOOK_ATTRIBUTES",
    "CODEBOOK_SUFFIXES",
    "DEFAULT_FORMAT",
    "FORMATS",
    "INDICES_SUFFIX",
    "StorageFormat",
]
