"""Linear (uniform) levels: g_k = k * x0."""

from __future__ import annotations

import numpy as np

from onnxq.quant.codebooks.base import Codebook, magnitude_count


class Linear(Codebook):
    evenly_spaced = True

    def log_coefficients(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        k = np.arange(1, magnitude_count(bits) + 1, dtype=np.float64)
        return np.ones_like(k), np.log(k)


CODEBOOK = Linear("linear", "uniform levels k*x0 (the paper's linear partition)")
