"""Per tensor, whichever codebook quantizes it with the least error: argmin over c of E(quantize(w, c)).

E is the weight-space squared error |w - w_q|^2 by default; with layer input
statistics it is the layer output error tr(dW H dW^T) (refine.output_error).
The choice is made by quantize.quantize, which knows both. The candidates are
every other codebook in the registry.
"""

from __future__ import annotations

from onnxq.quant.codebooks.base import Codebook


class Auto(Codebook):
    def log_coefficients(self, bits: int):
        raise NotImplementedError("auto chooses a codebook per tensor; it has no levels of its own")

    def candidates(self) -> tuple[Codebook, ...]:
        from onnxq.quant.codebooks import CODEBOOKS  # the registry lists this module too

        return tuple(c for c in CODEBOOKS.values() if not isinstance(c, Auto))


CODEBOOK = Auto("auto", "per tensor, the one of the other codebooks with the least error")
