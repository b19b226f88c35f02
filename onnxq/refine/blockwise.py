"""Measured sensitivity block by block (--sensitivity blocks), for models too large for a
session per weight (sensitivity.Probe opens the whole model once for each).

The graph is cut into segments (check/blocks.py): about PROBE_SEGMENTS, each with at most
blocks.BLOCK_BYTES of weights. A weight t of segment s is measured there alone: the segment runs,
from t's first reader on (the nodes before it cannot move), on the float model's own tensors
there, once per value of t, and its noise is taken at the segment's outputs,
n_t = sum ||z_t - z||^2 / sum ||z||^2. Then the segment's weights are all moved at once towards
their last value (the width nearest the target), by the fraction that makes the noise at the
segment's outputs about one weight's (a model is not linear, and the gain is applied to one
weight's perturbation), and the segment's outputs are carried through the rest of the model:
that perturbation's noise at the model's outputs, N_s, over its noise at the segment's, n_s, is
the segment's gain, and noise_t = n_t * N_s / n_s at each of t's values. One gain per segment,
not one per width: the carried perturbations are most of the measurement's runs after the
weights' own (a segment's perturbation runs through every later segment), and on the 134M
decoder the gains at its two widths were within 0.86 to 1.16 of each other, where a bit of width
moves a weight's noise 4x; the narrower width ranks a little worse for it (tools/
bench_sensitivity.py: Spearman against a session per tensor 0.946 -> 0.900 at 4 bits on
MobileNetV1-0.25, unchanged at 5). A weight read in several segments, and every whole allocation
(noise_parts), runs through the whole model, a segment at a time.

Each segment opens one session per pass, with its weights fed at every run (runtime.Fed), so that
the float runs, every weight's values and every carried perturbation run through it without a
copy of the segment's weights; a segment whose weights onnxruntime cannot all take as inputs
opens a session for the float runs and one per weight and per perturbation instead. The segments
run in order, so that memory holds one segment's weights, the tensors that cross between segments
for every carried perturbation, and the float model's inputs to every segment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq import runtime
from onnxq.check import blocks
from onnxq.data.samples import Sample
from onnxq.errors import OnnxqError
from onnxq.graph import external
from onnxq.graph.select import Weight
from onnxq.refine import sensitivity
from onnxq.refine.sensitivity import Values

WHAT = "sensitivity probe inputs"
# A weight's noise is measured from its first reader on (blocks.tail), on the float tensors there,
# kept for every probe sample while its segment is measured, up to this many bytes; beyond, the
# whole segment runs for each value. On the 468M decoder (15 segments, 4 samples) the weights' own
# runs took 27.9 CPU-s instead of 53.9.
TAIL_BYTES = 256 << 20
PROBE_SEGMENTS = 8  # a model is cut in about this many segments (more where blocks.BLOCK_BYTES says)


def supports(model: onnx.ModelProto, weights: Sequence[Weight]) -> bool:
    """Whether the model can be measured by blocks: its graph can be cut, and every weight is an
    initializer of the main graph."""
    return blocks.cuttable(model.graph) and all(
        w.graph is model.graph and w.constant_node is None for w in weights
    )


class BlockProbe(sensitivity.Measured):
    """sensitivity.Probe's measurements, a segment of the graph at a time (see the module)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        weights: Sequence[Weight],
        feeds: Sequence[Sample],
        mask: str | None = None,
        counts: Sequence[int] | None = None,
    ):
        super().__init__(model, weights, feeds, mask, counts)
        total = sum(external.stored_bytes(t) for t in self.model.graph.initializer)
        self.segments = blocks.plan(
            self.model.graph, min(blocks.BLOCK_BYTES, max(1, total // PROBE_SEGMENTS))
        )
        self._names = [o.name for o in model.graph.output]
        self._kinds = {t.name: sensitivity.tensor_dtype(t) for t in self.model.graph.initializer}
        self._unfed: set[int] = set()  # the segments that cannot feed all their weights
        self._homes = _homes(self.segments, self._weights)
        self._before: list[list[dict]] = []  # per segment, per feed: the float tensors alive before it
        alive = [dict(feed) for feed in self.feeds]
        for k in range(len(self.segments)):
            self._before.append([dict(values) for values in alive])
            self._advance(k, *self._swapped(k, {}), alive)
            self._evict(k)
        self.reference = [[values[n] for n in self._names] for values in alive]
        self.energy = sensitivity.output_energy(self.reference, self.feeds, mask)

    def noises(self, values: dict[str, Values], progress=None) -> dict[str, list[float]]:
        """Each weight's noise at each of its values, estimated as the module says (one gain per
        segment, from its weights all at their last value)."""
        local: dict[str, list[float]] = {}
        streams: dict[int, list[dict]] = {}  # segment -> per feed, what its perturbation moved
        combined: dict[int, float] = {}  # segment -> n_s
        done = 0
        for k, seg in enumerate(self.segments):
            mine = [n for n in seg.weights if n in values and self._homes.get(n) == k]
            initializers = set(self._kinds)
            tails = {n: blocks.tail(seg, n, initializers) for n in mine}
            within = sorted({i for t in tails.values() for i in t.inputs} - set(seg.inputs))
            fed = self._fed(k, within)
            sess = fed or self._session(k)
            for stream in streams.values():
                self._advance(k, sess, {}, stream)
            inputs = [{n: before[n] for n in seg.inputs} for before in self._before[k]]
            base, middle = self._base(k, sess, inputs, within if fed else [])
            scale = sensitivity.output_energy(base, self.feeds, self.mask, floats_only=True)
            swap: dict[str, np.ndarray] = {}
            for name in mine:
                vs = list(values[name]())
                try:
                    part = tails[name] if fed is not None and middle is not None else None
                    local[name] = self._alone(k, name, vs, fed, part, inputs, middle, base, scale)
                except OnnxqError:
                    pass  # onnxruntime cannot take it as an input: no entry, as sensitivity.Probe
                if vs:
                    swap[name] = vs[-1]
                done += 1
                if progress:
                    progress(done, len(values), name)
            if swap:
                swap = self._scaled(swap, [local[n][-1] for n in swap if n in local])
                swapped, extra = self._swapped(k, swap, fed)
                combined[k] = self._local(k, swapped, inputs, base, scale, extra)
                streams[k] = [dict(before) for before in self._before[k]]
                self._advance(k, swapped, extra, streams[k])
            del fed, sess
            self._evict(k)
        gains = {
            key: (self._error(stream) / combined[key] if combined[key] > 0 else 0.0)
            for key, stream in streams.items()
        }
        out = {name: [gains[self._homes[name]] * n for n in noise] for name, noise in local.items()}  # type: ignore[index]
        for name in [n for n in values if n in self._homes and self._homes[n] is None]:
            out[name] = [self.noise_all({name: v}) for v in values[name]()]  # read in several segments
            done += 1
            if progress:
                progress(done, len(values), name)
        return out

    def noise_parts(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per sample, the outputs' noise with every weight in values swapped at once (a segment's
        values read as it runs)."""
        alive = [dict(feed) for feed in self.feeds]
        for k, seg in enumerate(self.segments):
            swaps = {n: values[n] for n in seg.weights if n in values}
            self._advance(k, *self._swapped(k, swaps), alive)
            self._evict(k)
        outputs = [[v[n] for n in self._names] for v in alive]
        return sensitivity.error_parts(
            outputs, self.reference, self.feeds, self.counts, self.mask, self.energy
        )

    def _scaled(self, swap: dict[str, np.ndarray], noises: list[float]) -> dict[str, np.ndarray]:
        """The weights moved towards swap by the fraction alpha that makes their summed noise at the
        segment's outputs about one weight's (the median): the gain is then measured at the size
        of perturbation it scales, where the model may not be linear."""
        total, typical = float(np.sum(noises)), float(np.median(noises)) if noises else 0.0
        alpha = float(np.sqrt(typical / total)) if total > 0 else 1.0
        return {n: _towards(self._weights[n].array, v, alpha) for n, v in swap.items()}

    def _error(self, alive: list[dict]) -> float:
        """The noise of the model's outputs in alive (per feed), against the float ones."""
        outputs = [[v[n] for n in self._names] for v in alive]
        ones = [1] * len(self.feeds)
        return float(
            sensitivity.error_parts(outputs, self.reference, self.feeds, ones, self.mask, self.energy).sum()
        )

    def _local(
        self, k: int, sess, inputs: list[dict], base: list[list], scale: float, extra: dict, names=None
    ) -> float:
        """Segment k's outputs' noise (or that of names, which base holds), run on its float inputs
        with extra fed too."""
        names = names or self.segments[k].outputs
        got = [runtime.run(sess, {**x, **extra}, names, WHAT) for x in inputs]
        return _noise(got, base, self.feeds, self.mask) / scale if scale > 0 else 0.0

    def _base(
        self, k: int, sess, inputs: list[dict], within: list[str]
    ) -> tuple[list[list], list[dict] | None]:
        """Per feed, segment k's float outputs, and the tensors within it that its weights' tails
        read (None when they would take more than TAIL_BYTES: the tails are not run then)."""
        names = self.segments[k].outputs
        runs = [runtime.run(sess, x, names + within, WHAT) for x in inputs]
        middle = [dict(zip(within, ys[len(names) :])) for ys in runs]
        kept = sum(np.asarray(v).nbytes for m in middle for v in m.values()) <= TAIL_BYTES
        return [ys[: len(names)] for ys in runs], middle if kept else None

    def _alone(self, k: int, name: str, vs: list, fed, part, inputs, middle, base, scale) -> list[float]:
        """The noise at segment k's outputs of name at each of its values vs, the others float: run
        from name's first reader (part, blocks.tail) on the float tensors there, or with part None
        through the whole segment."""
        if part is None:
            own = fed or self._session(k, inputs=(name,))
            return [self._local(k, own, inputs, base, scale, {name: self._cast(name, v)}) for v in vs]
        there = [{**x, **m} for x, m in zip(inputs, middle)]
        own = self._session(k, fed=True, part=part, example=there[0] if there else {})
        xs = [{n: t[n] for n in part.inputs} for t in there]
        at = [self.segments[k].outputs.index(o) for o in part.outputs]
        ref = [[ys[i] for i in at] for ys in base]
        return [self._local(k, own, xs, ref, scale, {name: self._cast(name, v)}, part.outputs) for v in vs]

    def _advance(self, k: int, sess, extra: dict, alive: list[dict]) -> None:
        """Run segment k on each feed's tensors (and extra), and keep what later segments or the
        outputs read."""
        seg = self.segments[k]
        later = {n for s in self.segments[k + 1 :] for n in s.inputs} | set(self._names)
        for values in alive:
            ys = runtime.run(sess, {**{n: values[n] for n in seg.inputs}, **extra}, seg.outputs, WHAT)
            values.update(zip(seg.outputs, ys))
            for n in [n for n in values if n not in later]:
                del values[n]

    def _evict(self, k: int) -> None:
        """Segment k's weights leave this process's memory until a later pass reads them again."""
        external.evict(*(self._weights[n].array for n in self.segments[k].weights if n in self._weights))

    def _cast(self, name: str, value: np.ndarray) -> np.ndarray:
        """value in the type of the weight's tensor (as a session takes it)."""
        return np.ascontiguousarray(value, dtype=self._kinds[name])

    def _fed(self, k: int, within: Sequence[str] = ()) -> runtime.Fed | None:
        """Segment k's session with every weight this probe measures in it fed at each run (and the
        tensors within it named as outputs too), or None when onnxruntime cannot take one of the
        weights as an input (remembered)."""
        if k in self._unfed:
            return None
        seg = self.segments[k]
        try:
            return self._session(k, fed=True, part=replace(seg, outputs=[*seg.outputs, *within]))
        except OnnxqError:
            self._unfed.add(k)
            return None

    def _swapped(self, k: int, swaps: dict, fed: runtime.Fed | None = None) -> tuple[runtime.Fed, dict]:
        """A session over segment k with the weights in swaps set, and what each of its runs feeds
        besides the tensors: the fed session (fed, else a new one) and the swaps, or a session that
        holds them."""
        fed = fed or self._fed(k)
        if fed is not None:
            return fed, {n: self._cast(n, v) for n, v in swaps.items()}
        return self._session(k, swaps=swaps), {}

    def _session(
        self,
        k: int,
        inputs: Sequence[str] = (),
        swaps: dict | None = None,
        fed: bool = False,
        part: blocks.Segment | None = None,
        example: dict | None = None,
    ) -> runtime.Fed:
        """A session over segment k, or part of it (runtime.Fed): the weights in inputs fed at each
        run, those in swaps set, the others held; fed: every weight this probe measures in it fed,
        their arrays by default. example: tensors of a feed, to type inputs the model does not."""
        swaps = swaps or {}

        def held(tensor: onnx.TensorProto) -> np.ndarray | None:
            if tensor.name in swaps and tensor.name in self._arrays:
                return np.ascontiguousarray(swaps[tensor.name], self._arrays[tensor.name].dtype)
            fed_here = fed or tensor.name in inputs
            if fed_here and tensor.name in self._weights and tensor.name not in self._arrays:
                return self._cast(tensor.name, self._weights[tensor.name].array)
            return self._arrays.get(tensor.name)

        if example is None:
            example = self._before[k][0] if self._before[k] else {}
        proto, arrays = blocks.segment_model(self.model, part or self.segments[k], example, held)
        for tensor in proto.graph.initializer:
            if tensor.name in swaps and tensor.name not in arrays:
                kind = sensitivity.tensor_dtype(tensor)
                tensor.CopyFrom(numpy_helper.from_array(np.asarray(swaps[tensor.name], kind), tensor.name))
        given = dict(arrays) if fed else {n: arrays.pop(n) for n in inputs if n in arrays}
        return runtime.Fed(proto, given, spin=False, initializers={} if fed else arrays)


def _homes(segments: list[blocks.Segment], weights: dict[str, Weight]) -> dict[str, int | None]:
    """The segment that reads each weight, or None for a weight read in several."""
    homes: dict[str, int | None] = {}
    for k, seg in enumerate(segments):
        for name in seg.weights:
            if name in weights:
                homes[name] = k if name not in homes else None
    return homes


def _noise(got: list[list], base: list[list], feeds: Sequence[Sample], mask: str | None) -> float:
    total = 0.0
    for ys, refs, feed in zip(got, base, feeds):
        for y, r in zip(ys, refs):
            if np.issubdtype(np.asarray(r).dtype, np.floating):
                d = np.asarray(y).astype(np.float64) - r
                total += float(np.sum(sensitivity.kept(d, feed, mask) ** 2))
    return total


def _towards(a: np.ndarray, v: np.ndarray, alpha: float) -> np.ndarray:
    """a + alpha * (v - a), computed in one new array (42 -> 5 ms for a 4096 x 1024 float32
    weight, v a transposed view)."""
    kind = np.result_type(a.dtype, v.dtype)
    out = np.subtract(v, a, dtype=kind)
    out *= np.asarray(alpha, dtype=kind)
    out += a
    return out
