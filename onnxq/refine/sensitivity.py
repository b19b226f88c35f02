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

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq import runtime
from onnxq.data import samples as data
from onnxq.data.samples import Sample
from onnxq.errors import OnnxqError
from onnxq.graph.select import Weight, iter_graphs
from onnxq.refine.calibrate import LayerStats

Values = Callable[[], Sequence[np.ndarray]]  # a weight's values to measure, made when needed


class Measured:
    """What both probes (Probe, blockwise.BlockProbe) hold: the weights they measure, read in
    place from their arrays by sessions over a stubbed copy of the model, and the feeds."""

    def __init__(
        self,
        model: onnx.ModelProto,
        weights: Sequence[Weight],
        feeds: Sequence[Sample],
        mask: str | None = None,
        counts: Sequence[int] | None = None,
    ):
        self._weights = {w.name: w for w in weights}
        self._arrays = in_place_arrays(model, weights)
        self.model = runtime.stubbed(model, self._arrays)
        self.feeds = list(feeds)
        # Samples per run (data.batches stacks them along axis 0); None: one per run.
        self.counts = list(counts) if counts is not None else [1] * len(self.feeds)
        self.mask = mask

    @property
    def names(self) -> list[str]:
        return list(self._weights)

    @property
    def samples(self) -> int:
        """The samples each measurement runs (a batched feed counts all its rows)."""
        return sum(self.counts)

    def noise_all(self, values: dict[str, np.ndarray]) -> float:
        """Output noise with every weight in values swapped at once (a whole allocation)."""
        return float(self.noise_parts(values).sum())  # type: ignore[attr-defined]


class Probe(Measured):
    """Runs the model with one weight swapped at a time and says how far its outputs move.

    Each weight gets one session, in which that weight alone is a graph input and
    every value asked for runs through it: the other weights stay constants, so
    onnxruntime keeps their prepacked fast paths (a model taking all its weights as
    inputs runs about 4x slower on EfficientNet-Lite0), and one session serves every
    width measured (a session per width cost a third more, most of it in creating it).
    A weight held by a Constant node, or inside an If/Loop body, becomes a main-graph
    input too: the body reads it from the outer scope. Positions that an attention mask
    marks as padding are left out of the noise. The probe keeps the model with its main-graph
    weights stubbed (runtime.stubbed): every session reads them in place from the weights'
    arrays, so that no session copies the model (one per weight would cost the model's size in
    time and memory each).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        weights: Sequence[Weight],
        feeds: Sequence[Sample],
        mask: str | None = None,
        counts: Sequence[int] | None = None,
    ):
        super().__init__(model, weights, feeds, mask, counts)
        pairs = list(zip(iter_graphs(model.graph), iter_graphs(self.model.graph)))
        self._graphs = {id(a): b for a, b in pairs}  # each graph of model -> the same one in the copy
        self._held = pairs  # keeps the keys' objects, and so their ids, alive
        sess = runtime.session(self.model, initializers=self._arrays)
        start = time.perf_counter()
        self.reference = self._outputs(sess, {})
        self.seconds = time.perf_counter() - start  # one pass over the feeds
        self.energy = output_energy(self.reference, self.feeds, mask)

    def _outputs(self, sess, extra: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        return [runtime.run(sess, {**feed, **extra}, what="sensitivity probe inputs") for feed in self.feeds]

    def noise(self, name: str, values: Sequence[np.ndarray]) -> list[float]:
        """Output noise energy relative to the float outputs, with weight `name` set to each value."""
        if name not in self._weights:
            raise KeyError(f"{name!r} is not a weight this probe measures")
        weight = self._weights[name]
        graph = self._graphs[id(weight.graph)]  # the weight's graph in the probe's copy
        holder = weight.constant_node
        if holder is not None:
            holder = graph.node[list(weight.graph.node).index(holder)]
        with _as_input(self.model, graph, holder, name) as dtype:
            sess = runtime.session(
                self.model, initializers={n: a for n, a in self._arrays.items() if n != name}
            )
        return [self._noise(sess, {name: np.ascontiguousarray(v, dtype=dtype)}) for v in values]

    def noise_parts(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """noise_all split by sample (by run where a run's outputs do not line up with its samples):
        each part's error energy over the float outputs' total, so the parts sum to noise_all."""
        swapped = onnx.ModelProto()
        swapped.CopyFrom(self.model)
        arrays = dict(self._arrays)
        embedded = [self._weights[n] for n in values if n not in arrays]
        for weight, tensor in _tensors(swapped, embedded):
            tensor.CopyFrom(
                numpy_helper.from_array(np.asarray(values[weight], tensor_dtype(tensor)), tensor.name)
            )
        arrays.update({n: np.asarray(v, arrays[n].dtype) for n, v in values.items() if n in arrays})
        return self._parts(runtime.session(swapped, initializers=arrays), {})

    def _noise(self, sess, extra: dict[str, np.ndarray]) -> float:
        return float(self._parts(sess, extra, by_sample=False).sum())

    def noises(self, values: dict[str, Values], progress=None) -> dict[str, list[float]]:
        """noise() of each weight in values at each of the values its function gives (made one
        weight at a time); progress(done, total, name). A weight that onnxruntime cannot take as
        an input gets no entry."""
        out = {}
        for i, (name, make) in enumerate(values.items()):
            try:
                out[name] = self.noise(name, make())
            except OnnxqError:
                pass
            if progress:
                progress(i + 1, len(values), name)
        return out

    def _parts(self, sess, extra: dict[str, np.ndarray], by_sample: bool = True) -> np.ndarray:
        """Each sample's error energy as a share of the float outputs' total, or each run's when
        by_sample is False (the per-tensor measurement needs only the total, as before)."""
        outputs = self._outputs(sess, extra)
        counts = self.counts if by_sample else [1] * len(self.feeds)
        return error_parts(outputs, self.reference, self.feeds, counts, self.mask, self.energy)


def error_parts(outputs, reference, feeds, counts, mask: str | None, energy: float) -> np.ndarray:
    """Per sample (per run where a run's outputs do not line up with its counts[i] samples), the
    outputs' error energy against the reference outputs as a share of energy."""
    parts: list[float] = []
    for ys, refs, feed, k in zip(outputs, reference, feeds, counts):
        diffs = [np.asarray(y).astype(np.float64) - r for y, r in zip(ys, refs)]
        parts.extend(
            sum(float(np.sum(kept(d, sample, mask) ** 2)) for d in row)
            for row, sample in _by_sample(diffs, feed, k)
        )
    return np.asarray(parts, dtype=np.float64) / (energy if energy > 0 else 1.0)


def _by_sample(diffs: list[np.ndarray], feed: Sample, k: int) -> Iterator[tuple[list[np.ndarray], Sample]]:
    """A run of k samples: its output differences per sample, with the sample's own feed, when
    every output has the k samples along axis 0; else the run whole."""
    if k <= 1 or any(np.ndim(d) == 0 or len(d) != k for d in diffs):
        yield diffs, feed
        return
    for i in range(k):
        yield [d[i : i + 1] for d in diffs], {n: (a[i : i + 1] if np.ndim(a) else a) for n, a in feed.items()}


def kept(y: np.ndarray, feed: Sample, mask: str | None) -> np.ndarray:
    """y without the positions the feed's attention mask marks as padding (y whole if it does not line up)."""
    y = np.asarray(y)
    if not mask or mask not in feed or not np.issubdtype(y.dtype, np.number):
        return y if np.issubdtype(y.dtype, np.number) else np.zeros(0)
    keep = data.kept_rows(y, feed[mask])
    return y if keep is None else y.reshape(keep.size, -1)[keep]


IN_PLACE_BYTES = 4096  # smaller weights stay in the model (onnxruntime wants 128 bytes or more in place)
IN_PLACE_TYPES = (np.float32, np.float16, np.float64)


def in_place_arrays(model: onnx.ModelProto, weights: Sequence[Weight]) -> dict[str, np.ndarray]:
    """The weights that sessions read in place: main-graph initializers of a plain float type
    (others, in Constant nodes or If/Loop bodies, stay in the model), as contiguous arrays of
    the initializer's own type."""
    types = {t.name: tensor_dtype(t) for t in model.graph.initializer}
    arrays = {}
    for w in weights:
        kind = types.get(w.name)
        top = w.graph is model.graph and w.constant_node is None
        if top and kind in IN_PLACE_TYPES and w.array.nbytes >= IN_PLACE_BYTES:
            arrays[w.name] = np.ascontiguousarray(w.array, dtype=kind)
    return arrays


def tensor_dtype(tensor: onnx.TensorProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))  # without decoding the weight


def _tensors(model: onnx.ModelProto, weights: Sequence[Weight]):
    """(weight name, its TensorProto in model): an initializer, or a Constant node's value, in any graph."""
    wanted = {w.name for w in weights}
    for graph in iter_graphs(model.graph):
        for t in graph.initializer:
            if t.name in wanted:
                yield t.name, t
        for node in graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] in wanted:
                for a in node.attribute:
                    if a.name == "value":
                        yield node.output[0], a.t


@contextmanager
def _as_input(
    model: onnx.ModelProto, graph: onnx.GraphProto, constant_node: onnx.NodeProto | None, name: str
) -> Iterator[np.dtype]:
    """The model with a weight (held by constant_node, else an initializer of graph, one of the
    model's graphs) taken out of its graph and fed as a main-graph input, then put back.

    Yields the weight's numpy dtype.
    """
    main = model.graph
    if constant_node is not None:
        position = list(graph.node).index(constant_node)
        holder = graph.node.pop(position)
        tensor = next(a.t for a in holder.attribute if a.name == "value")
        restore = lambda: graph.node.insert(position, holder)
    else:
        position = next(i for i, t in enumerate(graph.initializer) if t.name == name)
        tensor = holder = graph.initializer.pop(position)
        restore = lambda: graph.initializer.insert(position, holder)
    is_input = graph is main and any(i.name == name for i in main.input)  # before IR 4
    if not is_input:
        main.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    try:
        yield tensor_dtype(tensor)
    finally:
        if not is_input:
            main.input.pop()
        restore()


def output_energy(
    outputs: Sequence[Sequence], feeds: Sequence[Sample], mask: str | None, floats_only: bool = False
) -> float:
    """The summed squares of every run's outputs (of the float ones only if asked), padding left out."""
    total = 0.0
    for ys, feed in zip(outputs, feeds):
        for y in ys:
            y = np.asarray(y)
            if floats_only and not np.issubdtype(y.dtype, np.floating):
                continue
            total += float(np.sum(kept(y, feed, mask).astype(np.float64) ** 2))
    return total


def layer_error(delta_rows: np.ndarray, stats: Sequence[LayerStats]) -> float:
    """tr(dW H dW^T) summed over the layers that read the weight, or |dW|^2 without any."""
    if not stats:
        return float(np.sum(delta_rows.astype(np.float64) ** 2))
    return sum(s.error(delta_rows) for s in stats)


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
