"""square: a codebook written for the registry test, in one file: g_k = (k * x0)^2."""

from __future__ import annotations

import numpy as np

from onnxq.quant.codebooks.base import Codebook, magnitude_count


class Square(Codebook):
    def log_coefficients(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        k = np.arange(1, magnitude_count(bits) + 1, dtype=np.float64)
        return np.full_like(k, 2.0), 2 * np.log(k)


CODEBOOK = Square("square", "levels (k * x0)^2, dense near zero")
