"""Measured sensitivity: noise_t = sum ||y_t - y||^2 / sum ||y||^2 over the model's outputs y
when only tensor t is replaced by its quantized value.

Each measurement is one session with one weight replaced. Measuring every
tensor at every width would take a session per pair; instead each tensor is measured once, at a reference width, and scaled to
the other widths by its layer's own output error: noise_t(b) = noise_t(ref) *
e_t(b) / e_t(ref), with e_t = tr(dW H dW^T) from the layer's input statistics
(or |dW|^2 where there are none).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.validate import session


class Probe:
    """Runs the model with one weight swapped at a time and says how far its outputs move.

    Each measurement builds a session from the float model with that one
    initializer replaced: the weights stay constants, so onnxruntime keeps its
    prepacked fast paths, which a model taking its weights as inputs loses (about
    4x slower per run on EfficientNet-Lite0).
    """

    def __init__(self, model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]):
        self.model = model
        self.tensors = {t.name: t for t in model.graph.initializer if t.name in set(names)}
        self.feeds = list(feeds)
        self.reference = self._outputs(model.SerializeToString())
        self.energy = sum(float(np.sum(y.astype(np.float64) ** 2)) for ys in self.reference for y in ys)

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def _outputs(self, serialized: bytes) -> list[list[np.ndarray]]:
        sess = session(serialized)
        return [sess.run(None, feed) for feed in self.feeds]

    def noise(self, name: str, value: np.ndarray) -> float:
        """Output noise energy relative to the float outputs, with weight `name` set to value."""
        tensor = self.tensors[name]
        original = onnx.TensorProto()
        original.CopyFrom(tensor)
        tensor.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(original).dtype), name))
        try:
            outputs = self._outputs(self.model.SerializeToString())
        finally:
            tensor.CopyFrom(original)
        err = 0.0
        for ys, refs in zip(outputs, self.reference):
            for y, r in zip(ys, refs):
                err += float(np.sum((y.astype(np.float64) - r) ** 2))
        return err / self.energy if self.energy > 0 else err


def layer_error(delta_rows: np.ndarray, hessians: Sequence[np.ndarray]) -> float:
    """tr(dW H dW^T) summed over the layers that read the weight, or |dW|^2 without any."""
    if not hessians:
        return float(np.sum(delta_rows.astype(np.float64) ** 2))
    total = 0.0
    o, k = delta_rows.shape
    for h in hessians:
        g = h.shape[0]
        d = delta_rows.reshape(g, o // g, k).astype(np.float64)
        total += float(np.sum((d @ h) * d))  # batched matmul: BLAS, not einsum's loops
    return total


def noise_curves(
    measured: dict[str, dict[int, float]], errors: dict[str, dict[int, float]]
) -> dict[str, dict[int, float]]:
    """noise_t(b) = gain_t(b) * e_t(b), gain = measured noise / layer error at the measured widths.

    Between two measured widths the gain is interpolated geometrically; beyond
    them it stays at the nearest one's.
    """
    curves = {}
    for name, per_width in errors.items():
        gains = {b: (m / per_width[b] if per_width[b] > 0 else 0.0) for b, m in measured[name].items()}
        known = sorted(gains)
        curve = {}
        for b, e in per_width.items():
            lo = max((k for k in known if k <= b), default=known[0])
            hi = min((k for k in known if k >= b), default=known[-1])
            if lo == hi or gains[lo] <= 0 or gains[hi] <= 0:
                gain = gains[lo if b <= lo else hi] if lo == hi else max(gains[lo], gains[hi])
            else:
                t = (b - lo) / (hi - lo)
                gain = gains[lo] ** (1 - t) * gains[hi] ** t
            curve[b] = gain * e
        curves[name] = curve
    return curves
