"""Per tensor, whichever codebook quantizes it with the least error: argmin over c of E(quantize(w, c)).

E is the weight-space squared error |w - w_q|^2 by default; with layer input
statistics it is the layer output error tr(dW H dW^T) (refine.output_error).
The choice is made by quantize.quantize, which knows both.
"""

from __future__ import annotations

from onnxq.quant.codebooks import exponential, kmeans, linear
from onnxq.quant.codebooks.base import Codebook


class Auto(Codebook):
    def log_coefficients(self, bits: int):
        raise NotImplementedError("auto chooses a codebook per tensor; it has no levels of its own")

    def candidates(self) -> tuple[Codebook, ...]:
        return (linear.CODEBOOK, exponential.CODEBOOK, kmeans.CODEBOOK)


CODEBOOK = Auto("auto", "per tensor, the one of linear, exponential and kmeans with the least error")
