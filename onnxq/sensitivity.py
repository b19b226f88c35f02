"""Measured sensitivity: noise_t = sum ||y_t - y||^2 / sum ||y||^2 over the model's outputs y
when only tensor t is replaced by its quantized value.

Measuring every tensor at every width would run the model once per pair;
instead each tensor is measured at a few widths (refine.choose_widths: the
reference and the narrowest) and scaled to the others by its layer's own output
error: noise_t(b) = gain_t(b) * e_t(b), with e_t = tr(dW H dW^T) from the
layer's input statistics (or |dW|^2 where there are none) and gain_t the
measured noise over e_t, interpolated between the measured widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnxq.validate import session


class Probe:
    """Runs the model with one weight swapped at a time and says how far its outputs move.

    Each weight gets one session, in which that weight alone is a graph input and
    every value asked for runs through it: the other weights stay constants, so
    onnxruntime keeps their prepacked fast paths (a model taking all its weights as
    inputs runs about 4x slower on EfficientNet-Lite0), and one session serves every
    width measured (a session per width cost a third more, most of it in creating it).
    """

    def __init__(self, model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]):
        self.model = model
        self._names = [t.name for t in model.graph.initializer if t.name in set(names)]
        self.feeds = list(feeds)
        self.reference = self._outputs(session(model.SerializeToString()), {})
        self.energy = sum(float(np.sum(y.astype(np.float64) ** 2)) for ys in self.reference for y in ys)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def _outputs(self, sess, extra: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        return [sess.run(None, {**feed, **extra}) for feed in self.feeds]

    def noise(self, name: str, values: Sequence[np.ndarray]) -> list[float]:
        """Output noise energy relative to the float outputs, with weight `name` set to each value."""
        if name not in self._names:
            raise KeyError(f"{name!r} is not a main-graph initializer this probe measures")
        graph = self.model.graph
        position = next(i for i, t in enumerate(graph.initializer) if t.name == name)
        original = graph.initializer.pop(position)
        is_input = any(i.name == name for i in graph.input)  # before IR 4, initializers are inputs too
        if not is_input:
            graph.input.append(
                onnx.helper.make_tensor_value_info(name, original.data_type, list(original.dims))
            )
        try:
            sess = session(self.model.SerializeToString())
        finally:
            if not is_input:
                graph.input.pop()
            graph.initializer.insert(position, original)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(original.data_type)  # without decoding the weight
        noises = []
        for value in values:
            outputs = self._outputs(sess, {name: np.ascontiguousarray(value, dtype=dtype)})
            err = 0.0
            for ys, refs in zip(outputs, self.reference):
                for y, r in zip(ys, refs):
                    err += float(np.sum((y.astype(np.float64) - r) ** 2))
            noises.append(err / self.energy if self.energy > 0 else err)
        return noises


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
