"""The storage-format registry: a new format is one file plus one line here.

A format module satisfies storage.base.StorageFormat (and, if it stores whole weights
itself, WholeWeights); the pipeline reaches formats only through FORMATS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxq.storage import fold, matmulnbits, qdq
from onnxq.storage.base import StorageFormat

if TYPE_CHECKING:
    from onnxq.graph.select import Weight

FORMATS: dict[str, StorageFormat] = {
    "fold": fold,
    "qdq": qdq,
    "matmulnbits": matmulnbits,
}
DEFAULT_FORMAT = "fold"


def group_size(
    weight: Weight, fmt: str, codebook: str, bits: int, granularity: str, asked: int | None
) -> int | None:
    """The weights per block a weight is quantized in: --group-size where given (asked), else the
    format's default_group_size for a weight quantized per channel; None for one row per channel
    (or per tensor). What compress quantizes (jobs.weight_rows) and what inspect predicts both ask here."""
    if granularity != "channel":
        return None
    return asked or FORMATS[fmt].default_group_size(weight, codebook, bits)


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
    "group_size",
]
