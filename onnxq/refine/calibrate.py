"""Per-layer input statistics for GPTQ-style rounding and bias correction.

A layer's weight is seen as G groups of R output rows by K input columns; every
sample and output position gives each group g one column x_g in R^K that W_g
multiplies. Over all of them: mean[g] = E[x_g] and hessian[g] = E[x_g x_g^T].
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, replace

import numpy as np
import onnx
from onnx import helper

from onnxq import runtime
from onnxq.data import samples as data
from onnxq.data.samples import InputSpec, Sample
from onnxq.errors import OnnxqError
from onnxq.graph.select import Skip, Weight
from onnxq.refine.patches import conv_columns, conv_pads

CHUNK_BYTES = 64 << 20  # the most Conv patches built at once
# Columns are multiplied this many (at least) at a time: a few tokens per sample through a wide
# layer made each product a rank-16 update that reads and writes all of H (K = 4096: 32 of them
# took 7.3 CPU-s where one of all 512 columns takes 0.25).
MERGE_COLUMNS = 1024
COLUMNS_SHARE = 0.25  # a layer's columns are kept, not its H, while they take at most this share of H
# ... where H takes this much or more: rebuilding a small one costs more than it saves (OpenBLAS
# buffers for the threads that read it: MobileNetV1-0.25 --target-bits 4 peaked 60 MB higher).
COLUMNS_FROM = 4 << 20


@dataclass(frozen=True)
class LayerSpec:
    """One (weight, consuming node) pair whose input statistics to collect."""

    key: str  # the node's name, or its first output when the name is empty or repeated
    op: str  # "Conv", "Gemm" or "MatMul"
    activation: str  # the tensor that the weight multiplies
    weight: str
    groups: int  # G
    columns: int  # K
    trans_a: bool = False  # Gemm: the activation is (K, M)
    kernel: tuple[int, ...] = ()  # Conv only, from here on
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # ONNX order: every begin, then every end
    auto_pad: str = "NOTSET"


Columns = list[tuple[slice, np.ndarray]]  # (groups, their columns (G', K, n)) in the order seen


class LayerStats:
    """E[x] and E[x x^T] of a layer's input columns, in float64. H is kept, or, where the columns
    seen take less memory than it (a few hundred tokens through a wide layer), rebuilt from them
    each time it is read, with the same arithmetic: the 468M decoder's 3.8 GB of H are 0.35 GB of
    columns on its 32 synthetic samples."""

    def __init__(
        self,
        mean: np.ndarray,
        hessian: np.ndarray | None = None,
        count: int = 0,
        samples: int = 1,
        columns: Columns | None = None,
    ) -> None:
        if hessian is None and columns is None:
            raise ValueError("LayerStats needs its H or the columns it comes from")
        self.mean = mean  # (G, K)
        self.count = count  # columns accumulated per group: samples x output positions
        self.samples = samples  # the inputs (calibration samples) these columns came from
        self._hessian = hessian
        self._columns = columns
        self._rebuilt: np.ndarray | None = None

    @property
    def hessian(self) -> np.ndarray:
        """(G, K, K)."""
        if self._hessian is not None:
            return self._hessian
        global _last
        if self._rebuilt is None:  # q, k and v read one H in turn: it is made once for them
            previous = _last() if _last is not None else None
            if previous is not None:
                previous._rebuilt = None  # one rebuilt H at a time
            outer = np.zeros(self.mean.shape + self.mean.shape[-1:])
            for groups, cols in self._columns or []:
                _accumulate(outer, groups, cols)
            self._rebuilt, _last = _finish(outer, self.count), weakref.ref(self)
        return self._rebuilt

    def error(self, delta_rows: np.ndarray) -> float:
        """tr(dW H dW^T) for a weight's change dW (O, K), its rows in G groups."""
        return float(self.row_energy(delta_rows).sum())

    def row_energy(self, delta_rows: np.ndarray) -> np.ndarray:
        """(O,): d H d^T for each row d of dW (O, K), its rows in G groups. From the columns where
        they are kept, ||d X||^2 / count, which costs n/K of the product with H and rebuilds no H."""
        g, k = self.mean.shape
        d = delta_rows.reshape(g, -1, k)
        if self._columns is None:
            d = d.astype(np.float64)
            return np.einsum("grk,grk->gr", np.matmul(d, self.hessian), d).reshape(-1)  # BLAS matmul
        out = np.zeros(d.shape[:2])
        d = d.astype(np.float32)  # the product in float32 (half the time), its squares summed in float64
        for groups, cols in self._columns:
            out[groups] += np.square(np.matmul(d[groups], cols, dtype=np.float32), dtype=np.float64).sum(
                axis=2
            )
        return (out / self.count).reshape(-1)

    def __repr__(self) -> str:
        g, k = self.mean.shape
        kept = "kept" if self._hessian is not None else "from columns"
        return f"LayerStats(mean({g}, {k}), hessian({g}, {k}, {k}) {kept}, count={self.count}, samples={self.samples})"


_last: weakref.ref[LayerStats] | None = None  # the statistics whose H was rebuilt last


def _accumulate(outer: np.ndarray, groups: slice, cols: np.ndarray) -> None:
    # The product in the activation's precision, group by group as a 2-D cols @ cols.T, which numpy
    # computes with the symmetric, half-cost BLAS routine (a batched matmul does not); the running
    # sums in float64.
    for g, c in zip(range(groups.start, groups.stop), cols):
        outer[g] += c @ c.T


def _finish(outer: np.ndarray, count: int) -> np.ndarray:
    """outer / count, made symmetric, in place: one more (K, K) array per group at a time, where
    the 468M decoder's held 3.8 GB of them twice."""
    outer /= count
    for g in range(len(outer)):
        outer[g] = (outer[g] + outer[g].T) / 2
    return outer


def layer_specs(model: onnx.ModelProto, weights: Sequence[Weight]) -> tuple[list[LayerSpec], list[Skip]]:
    """One spec per (weight, main-graph consumer), and a reason for each use left out."""
    graph = model.graph
    by_name = {w.name: w for w in weights}
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    names = Counter(n.name for n in graph.node)
    specs: list[LayerSpec] = []
    skips: list[Skip] = []
    used = set()
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name not in by_name or name not in constants:
                continue  # not a weight, or a weight of a subgraph
            used.add(name)
            shape = tuple(by_name[name].array.shape)
            key = node.name if node.name and names[node.name] == 1 else node.output[0]
            spec = _spec(node, slot, name, shape, key)
            if isinstance(spec, str):
                skips.append(Skip(name, shape, f"{node.op_type} {key}: {spec}"))
            elif spec.activation in constants:
                skips.append(Skip(name, shape, f"{node.op_type} {key}: its input is a constant"))
            else:
                specs.append(spec)
    for w in weights:
        if w.name not in used:
            reason = "used only inside subgraphs; statistics cover the main graph"
            skips.append(Skip(w.name, tuple(w.array.shape), reason))
    return specs, skips


def _spec(node: onnx.NodeProto, slot: int, name: str, shape: tuple[int, ...], key: str) -> LayerSpec | str:
    """The spec of the weight `name` at input `slot` of node, or why there is none."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    base = {"key": key, "op": op, "activation": node.input[0], "weight": name}
    if op == "Conv" and slot == 1:
        kernel = shape[2:]
        nd = len(kernel)
        groups = int(attrs.get("group", 1))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        return LayerSpec(
            **base,
            groups=groups,
            columns=shape[1] * math.prod(kernel),
            kernel=kernel,
            strides=tuple(attrs.get("strides", (1,) * nd)),
            dilations=tuple(attrs.get("dilations", (1,) * nd)),
            pads=tuple(attrs.get("pads", ())),
            auto_pad=auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad),
        )
    if op == "Gemm" and slot == 1:
        columns = shape[1] if attrs.get("transB", 0) else shape[0]
        return LayerSpec(**base, groups=1, columns=columns, trans_a=bool(attrs.get("transA", 0)))
    if op == "MatMul" and slot == 1:
        if len(shape) != 2:
            return f"a {len(shape)}-D MatMul weight is not supported"
        return LayerSpec(**base, groups=1, columns=shape[0])
    if op in ("Gemm", "MatMul"):
        return "the weight is the first operand, which is not supported"
    return f"{op} input {slot} is not supported"


def collect_layer_stats(
    model: onnx.ModelProto,
    layers: Sequence[LayerSpec],
    samples: Sequence[Sample],
    specs: Sequence[InputSpec],
    batch: int = 16,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> dict[str, LayerStats]:
    """Run the model on the samples, about batch at a time, and accumulate each layer's input
    statistics. Memory holds one batch of every layer's input. Rows that an attention mask
    marks as padding are left out of Gemm and MatMul statistics. A layer that saw no input
    (a branch never taken, a convolution with no output position) has no entry. Layers that
    read the same input the same way (a transformer's q, k and v projections) share one
    LayerStats, computed once.
    """
    if batch < 1:
        raise OnnxqError(f"the batch size must be at least 1, not {batch}")
    if not layers:
        return {}
    first: dict[tuple, LayerSpec] = {}
    for s in layers:
        first.setdefault(_same_input(s), s)
    unique = list(first.values())
    sums = {s.key: _Sums(s) for s in unique}
    for inputs, count in _layer_inputs(model, unique, samples, specs, batch, arrays or {}):
        for s in unique:
            for x in inputs[s.key]:
                sums[s.key].add(x)
            sums[s.key].samples += count if inputs[s.key] else 0
    done = {}
    for key in list(sums):
        stats = sums.pop(key).result()  # each running sum goes as its result comes: not both at once
        if stats is not None:
            done[key] = stats
    shared = {s.key: first[_same_input(s)].key for s in layers}
    return {s.key: done[shared[s.key]] for s in layers if shared[s.key] in done}


def _same_input(spec: LayerSpec) -> tuple:
    """What a layer's statistics depend on: everything about it but its own and its weight's names."""
    return astuple(replace(spec, key="", weight=""))


def _layer_inputs(
    model: onnx.ModelProto,
    layers: Sequence[LayerSpec],
    samples: Sequence[Sample],
    specs: Sequence[InputSpec],
    batch: int,
    arrays: Mapping[str, np.ndarray],
) -> Iterator[tuple[dict[str, list[np.ndarray]], int]]:
    """Each layer's input rows (see _rows_first), padding left out, for about batch samples at a
    time, and how many samples they came from."""
    fed = {s.name for s in specs}
    fetch = sorted({s.activation for s in layers} - fed)
    sess = None
    if fetch:
        # Without prepacking: a packed copy of every weight took the 134M decoder's statistics
        # session from 1.29 to 2.08 GB while it opened, and MLAS packs a run's blocks as it goes.
        stubbed = _with_outputs(model, fetch, arrays)
        given, held = _fed_weights(model, arrays)
        sess = runtime.Fed(stubbed, given, spin=False, initializers=held, prepack=False)
    mask = data.mask_input(specs)
    pending: dict[str, list[np.ndarray]] = {s.key: [] for s in layers}
    waiting = 0
    for feed, count in data.batches(samples, specs, batch):
        values = dict(feed)
        if sess is not None:
            values.update(zip(fetch, runtime.run(sess, feed, fetch, "calibration data")))
        for s in layers:
            pending[s.key].append(_rows_first(s, values[s.activation], feed.get(mask) if mask else None))
        waiting += count
        if waiting >= batch:
            yield pending, waiting
            pending = {s.key: [] for s in layers}
            waiting = 0
    if waiting:
        yield pending, waiting


FED_OPS = {"MatMul", "Gemm", "Gather"}  # their kernels read a weight fed at each run as fast as a held one


def _fed_weights(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """The arrays the statistics session is fed at each run (runtime.Fed: not copied into it), and
    those it holds: a weight that only FED_OPS read is fed (without prepacking they compute the
    same, as fast), one that a Conv reads is held (onnxruntime lays a constant Conv weight out for
    its faster kernels)."""
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    fed = {n: a for n, a in arrays.items() if readers.get(n) and readers[n] <= FED_OPS}
    return fed, {n: a for n, a in arrays.items() if n not in fed}


def _with_outputs(
    model: onnx.ModelProto, names: list[str], arrays: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """A copy whose only outputs are these tensors, so onnxruntime drops the nodes past them;
    the initializers named in arrays are stubs (runtime.stubbed), whose values the session reads
    in place: a whole copy of the model and its serialized bytes took the 134M decoder's
    statistics from 1.4 to 3.05 GB."""
    out = runtime.stubbed(model, arrays) if arrays else onnx.ModelProto()
    if not arrays:
        out.CopyFrom(model)
    del out.graph.output[:]
    # Untyped outputs: onnxruntime infers their types, so no shape inference is needed here.
    out.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return out


def _rows_first(spec: LayerSpec, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The activation with samples along axis 0: (N, C, *S) for Conv, (M, K) otherwise, without
    the rows an attention mask marks as padding."""
    x = np.asarray(x)
    x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
    if spec.op == "Conv":
        return x
    rows = x.T if spec.op == "Gemm" and spec.trans_a else x.reshape(-1, spec.columns)
    keep = data.kept_rows(x if not spec.trans_a else rows, mask)
    return rows if keep is None or keep.size != len(rows) else rows[keep]


class _Sums:
    """Running float64 sums of the columns and of their outer products; the columns themselves
    while they take at most COLUMNS_SHARE of H's memory (LayerStats rebuilds H from them)."""

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.total = np.zeros((spec.groups, spec.columns))
        self.outer: np.ndarray | None = None
        self.columns: Columns | None = []
        self.kept = 0
        self.count = 0
        self.samples = 0
        self._pending: Columns = []  # columns not yet stored: fewer than MERGE_COLUMNS of one slice

    def add(self, x: np.ndarray) -> None:
        """Add a batch: (N, C, *S) for a Conv, (M, K) rows otherwise."""
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by result()
            self._add_batch(x)

    def _add_batch(self, x: np.ndarray) -> None:
        if self.spec.op != "Conv":
            self._add(slice(0, 1), x.T[None], x.sum(axis=0, dtype=np.float64)[None], len(x))
            return
        for groups, cols, keep in self._conv_columns(x):
            # Pairwise float32 sums along the contiguous axis: accurate, and 4x faster than float64.
            count = (cols.shape[2] if keep is None else int(keep.sum())) if groups.start == 0 else 0
            self._add(groups, cols, cols.sum(axis=2), count)

    def _add(self, groups: slice, cols: np.ndarray, total: np.ndarray, count: int) -> None:
        if cols.shape[1] != self.total.shape[1]:
            raise OnnxqError(
                f"{self.spec.key}: its input gives {cols.shape[1]} columns, the weight has "
                f"{self.total.shape[1]}; check the model's shapes"
            )
        self.total[groups] += total
        self.count += count
        if self._pending and self._pending[0][0] != groups:
            self._flush()
        self._pending.append((groups, cols))
        if sum(c.shape[2] for _, c in self._pending) >= MERGE_COLUMNS:
            self._flush()

    def _flush(self) -> None:
        """Store the pending columns as one chunk: kept, or added to the sums."""
        if not self._pending:
            return
        groups = self._pending[0][0]
        parts = [c for _, c in self._pending]
        cols = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
        self._pending = []
        g, k = self.total.shape
        large = g * k * k * 8 >= COLUMNS_FROM
        if self.columns is not None and large and self.kept + cols.nbytes <= COLUMNS_SHARE * g * k * k * 8:
            self.columns.append((groups, cols))
            self.kept += cols.nbytes
            return
        if self.outer is None:  # from here on the sums: the columns so far first, in their order
            self.outer = np.zeros((g, k, k))
            for before in self.columns or []:
                _accumulate(self.outer, *before)
            self.columns = None
        _accumulate(self.outer, groups, cols)

    def _conv_columns(self, x: np.ndarray) -> Iterator[tuple[slice, np.ndarray, np.ndarray | None]]:
        """(groups, columns, keep) chunks covering every sample and group of x once."""
        spec = self.spec
        pads = conv_pads(x.shape[2:], spec.kernel, spec.strides, spec.dilations, spec.pads, spec.auto_pad)
        # Bound the patches built at once: by samples, and by groups when one sample is too big.
        per_group = x[:1].nbytes // spec.groups * math.prod(spec.kernel) // math.prod(spec.strides)
        samples = max(1, CHUNK_BYTES // max(per_group * spec.groups, 1))
        groups = spec.groups if samples > 1 else max(1, CHUNK_BYTES // max(per_group, 1))
        width = x.shape[1] // spec.groups
        for start in range(0, len(x), samples):
            for first in range(0, spec.groups, groups):
                last = min(first + groups, spec.groups)
                part = x[start : start + samples, first * width : last * width]
                cols, keep = conv_columns(part, last - first, spec.kernel, spec.strides, spec.dilations, pads)
                yield slice(first, last), cols, keep

    def result(self) -> LayerStats | None:
        """The statistics, or None when no column was seen."""
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below
            self._flush()
        if self.count == 0:
            return None
        if not (np.isfinite(self.total).all() and self._squares_finite()):
            raise OnnxqError(
                f"{self.spec.key}: the calibration data drives its input to values too large to square "
                "(beyond about 1e19 in float32); give inputs on the scale the model was trained on"
            )
        mean, samples = self.total / self.count, max(self.samples, 1)
        if self.outer is None:
            return LayerStats(mean, None, self.count, samples, columns=self.columns)
        outer, self.outer = self.outer, None  # the sums become H in place
        return LayerStats(mean, _finish(outer, self.count), self.count, samples)

    def _squares_finite(self) -> bool:
        """Whether the outer products are finite: their diagonals are, since |H_ij| <= max(H_ii, H_jj)."""
        if self.outer is not None:
            return bool(np.isfinite(self.outer).all())
        with np.errstate(over="ignore", invalid="ignore"):
            return all(np.isfinite(np.sum(cols * cols, axis=2)).all() for _, cols in self.columns or [])
