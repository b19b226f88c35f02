"""The codebook registry: a new codebook is one file plus one line here."""

from __future__ import annotations

from onnxq.quant.codebooks import auto, exponential, kmeans, linear
from onnxq.quant.codebooks.base import Codebook, code_layout, magnitude_count, zero_code

CODEBOOKS: dict[str, Codebook] = {
    "linear": linear.CODEBOOK,
    "exponential": exponential.CODEBOOK,
    "kmeans": kmeans.CODEBOOK,
    "auto": auto.CODEBOOK,
}
DEFAULT_CODEBOOK = "exponential"

__all__ = ["CODEBOOKS", "DEFAULT_CODEBOOK", "Codebook", "code_layout", "magnitude_count", "zero_code"]
