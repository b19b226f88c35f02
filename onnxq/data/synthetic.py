"""Synthetic inputs that run the model: every free dimension sized, every input drawn by its role.

Sizes come from, in this order: --dim; the model's own hints (metadata_props, and the
consumers that fix a size, such as a MatMul weight's rows); then a short search over
plausible sizes until onnxruntime runs the float model (at most MAX_TRIES runs; none after
MAX_SECONDS once MIN_TRIES have run, nor after HARD_SECONDS in any case). Values follow what
each input is for, as the graph shows it:

- token ids (an input that indexes a constant table through Gather): ids below the
  table's row count; an attention mask: ones; position ids: 0, 1, 2, ...; segment ids: 0;
- recurrent state (the initial state of an LSTM/GRU/RNN, or named like one): zeros;
- an integer the graph compares with constants (a sample rate): one of those constants;
- every other float: standard normal.

Sequence axes get at least MIN_SEQUENCE positions, so that attention and convolutions see
more than one.
"""

from __future__ import annotations

import ast
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxq.data.samples import LENGTH_NAME, MAX_INPUT_BYTES, InputSpec, Sample
from onnxq.errors import OnnxqError

MAX_TRIES = 40
MAX_SECONDS = 30.0
# The time cap never cuts the search before this many runs, so that a busy machine finds the
# same sizes as an idle one: the zoo's ocr_rec needs 13, and on 2 cores shared with other work
# 30 s had allowed only 10 (its --target-bits then failed where it passes alone).
MIN_TRIES = 20
HARD_SECONDS = 60.0  # a model whose every run is slow still fails within this
MIN_SEQUENCE = 16
MAX_ELEMENTS = 1 << 28  # per input: 1 GiB of float32, so that a huge --dim fails in one line
BATCH_SIZES = (1, 2)
SEQUENCE_SIZES = (16, 32, 64, 128, 256, 512, 8, 4, 2, 1)
IMAGE_SIZES = (224, 320, 256, 640, 128, 416, 512, 384, 480, 608, 800, 96, 64, 48, 32, 160, 192, 1024, 16, 8)
SIGNAL_SIZES = (16000, 512, 1024, 4096, 8000, 256, 2048, 576, 400, 160, 128, 64, 32, 16)
OTHER_SIZES = (1, 2, 8, 16, 32, 64, 128, 224, 256, 320, 640, 16000)
# Ops that pass a value on unchanged in what it indexes (for following token ids to their table).
_PASS_THROUGH = {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand"}
_STATE = re.compile(
    r"(^|[_./])(state|states|hidden|hx|h0|c0|h|c|past|cache|memory|mem)(\d*|[_./].*)$", re.IGNORECASE
)
_MASK = re.compile(r"mask", re.IGNORECASE)
_POSITION = re.compile(r"position|pos_ids", re.IGNORECASE)
_SEGMENT = re.compile(r"token_type|segment", re.IGNORECASE)


@dataclass(frozen=True)
class Role:
    """What an input is for: float (sequence-first: a time-major recurrent input), tokens, mask,
    positions, segments, state, choice, bool or int."""

    kind: str
    high: int = 2  # tokens and int: values below this
    choices: tuple[int, ...] = ()  # choice: the constants the graph compares it with


@dataclass
class Plan:
    """Resolved shapes and roles of every input, and how each size was found."""

    specs: list[InputSpec]
    roles: dict[str, Role]
    sizes: dict[str, int]  # free dimension key -> size
    sources: dict[str, str] = field(default_factory=dict)  # key -> "--dim", "metadata", "graph", "search"
    values: dict[str, int] = field(default_factory=dict)  # choice inputs -> the value fed
    tries: int = 0
    # The float model's outputs on runs of these inputs, when the runner kept them (validation
    # then compares against them instead of running the float model again).
    reference: Reference | None = None

    def shape(self, spec: InputSpec) -> tuple[int, ...]:
        if spec.dims is None:
            return ()
        return tuple(d if isinstance(d, int) else self.sizes[spec.key(i)] for i, d in enumerate(spec.dims))

    def feeds(self, samples: int, seed: int, limit: int | None = None) -> list[Sample]:
        """samples feeds, seeded: the same seed gives the same inputs; OnnxqError when they would
        take more than limit bytes (None: MAX_INPUT_BYTES), before any is made."""
        size = samples * sum(math.prod(self.shape(s)) * s.dtype.itemsize for s in self.specs)
        limit = MAX_INPUT_BYTES if limit is None else limit
        if size > limit:
            raise OnnxqError(
                f"{samples:,} random samples of {self.describe()} would take {size / 2**20:,.0f} MiB, more "
                f"than --max-input-bytes ({limit / 2**20:,.0f} MiB); ask for fewer samples"
            )
        rng = np.random.default_rng(seed)
        # numpy gives a scalar, not an array, for a shape of (): onnxruntime takes only arrays
        return [{s.name: np.asarray(self._value(s, rng)) for s in self.specs} for _ in range(samples)]

    def _value(self, spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
        shape, role, dtype = self.shape(spec), self.roles[spec.name], spec.dtype
        if role.kind == "choice":
            return np.full(shape, self.values.get(spec.name, role.choices[0]), dtype)
        if role.kind in ("state", "segments"):
            return np.zeros(shape, dtype)
        if role.kind == "mask":
            return np.ones(shape, dtype)
        if role.kind == "positions":
            return np.broadcast_to(np.arange(shape[-1] if shape else 1), shape).astype(dtype)
        if role.kind == "bool":
            return rng.random(shape) < 0.5
        if role.kind in ("tokens", "int"):
            return rng.integers(0, max(role.high, 1), shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    def describe(self) -> str:
        """e.g. "x 1x3x224x224 (x[2], x[3] by search); sr = 16000"."""
        parts = []
        for s in self.specs:
            shape = "x".join(map(str, self.shape(s))) or "scalar"
            found = [
                f"{s.key(i)}={self.sizes[s.key(i)]} ({self.sources.get(s.key(i), '?')})"
                for i, d in enumerate(s.dims or ())
                if not isinstance(d, int)
            ]
            value = f" = {self.values[s.name]}" if s.name in self.values else ""
            role = self.roles[s.name].kind
            parts.append(f"{s.name} {shape}{value} [{role}]" + (f" ({', '.join(found)})" if found else ""))
        return "; ".join(parts)

    def shapes(self) -> dict[str, list[int]]:
        return {s.name: list(self.shape(s)) for s in self.specs}


@dataclass
class Reference:
    """The float model's outputs (one list per run) on runs of synthetic inputs."""

    runs: list[Sample]
    outputs: list[list]

    def answers(self, runs: Sequence[Sample]) -> bool:
        """Whether these are the runs the outputs were made on."""
        return len(runs) == len(self.runs) and all(
            a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
            for a, b in zip(runs, self.runs)
        )


# Runs the float model on the plan's inputs (the first of Plan.feeds(.., seed), or more); raises
# OnnxqError when it fails. It may leave the outputs in Plan.reference.
Runner = Callable[[Plan, int], None]


def plan_inputs(
    model: onnx.ModelProto,
    specs: Sequence[InputSpec],
    dims: dict[str, int],
    runner: Runner,
    seed: int = 0,
) -> Plan:
    """The sizes and roles of synthetic inputs on which runner (the float model) runs, or OnnxqError
    naming the free dimensions and the --dim to pass."""
    specs = list(specs)
    roles = input_roles(model, specs)
    keys = free_keys(specs)
    unknown = sorted(set(dims) - set(keys))
    if unknown:
        shown = ", ".join(keys) or "none"
        raise OnnxqError(
            f"--dim {unknown[0]}: the model has no free dimension of that name; its free dimensions are: {shown}"
        )
    pinned = {k: (v, "--dim") for k, v in dims.items()}
    for k, v in model_hints(model, specs, keys).items():
        pinned.setdefault(k, v)
    candidates = {k: _candidates(k, keys[k], roles, _metadata_sizes(model)) for k in keys if k not in pinned}
    plan = Plan(
        specs, roles, {k: v for k, (v, _) in pinned.items()}, {k: src for k, (_, src) in pinned.items()}
    )
    for k, options in candidates.items():
        plan.sizes[k], plan.sources[k] = options[0], "search"
    _check_size(plan)
    _search(plan, candidates, runner, seed)
    return plan


def free_keys(specs: Sequence[InputSpec]) -> dict[str, list[tuple[InputSpec, int]]]:
    """Each free dimension's --dim name, with the (input, axis) places it sizes."""
    keys: dict[str, list[tuple[InputSpec, int]]] = {}
    for s in specs:
        for axis, d in enumerate(s.dims or ()):
            if not isinstance(d, int):
                keys.setdefault(s.key(axis), []).append((s, axis))
    return keys


def _search(plan: Plan, candidates: dict[str, list[int]], runner: Runner, seed: int) -> None:
    """Try the first candidates, then each group of keys (an image's height and width together)
    and each choice input over its options, one at a time, until a run succeeds."""
    start = time.monotonic()
    first = _attempt(plan, runner, seed)
    if first is None:
        return
    base = dict(plan.sizes)
    steps: list[dict[str, int] | tuple[str, int]] = []
    for group in _groups(plan, candidates):
        for i in range(1, max(len(candidates[k]) for k in group)):
            steps.append({k: candidates[k][min(i, len(candidates[k]) - 1)] for k in group})
    for name, role in plan.roles.items():
        steps.extend((name, c) for c in role.choices[1:])
    for step in steps:
        if _stop(plan.tries, time.monotonic() - start):
            break
        plan.sizes = {**base, **step} if isinstance(step, dict) else dict(base)
        if isinstance(step, tuple):
            plan.values[step[0]] = step[1]
        if _attempt(plan, runner, seed) is None:
            return
        if isinstance(step, tuple):
            plan.values.pop(step[0], None)
    plan.sizes = base
    raise OnnxqError(_hint(plan, first))


def _stop(tries: int, seconds: float) -> bool:
    """Whether the search has tried enough: the time caps count only past MIN_TRIES runs, or
    past HARD_SECONDS."""
    return tries >= MAX_TRIES or seconds > HARD_SECONDS or (tries >= MIN_TRIES and seconds > MAX_SECONDS)


def _attempt(plan: Plan, runner: Runner, seed: int) -> str | None:
    """None when the float model runs on the plan's inputs, else why not."""
    plan.tries += 1
    try:
        _check_size(plan)
        runner(plan, seed)
    except OnnxqError as exc:
        return str(exc)
    return None


def _check_size(plan: Plan) -> None:
    for s in plan.specs:
        count = int(np.prod(plan.shape(s), dtype=np.float64))
        if count > MAX_ELEMENTS:
            raise OnnxqError(
                f"input {s.name} would be {'x'.join(map(str, plan.shape(s)))} ({count:,} elements, "
                f"more than {MAX_ELEMENTS:,}); give smaller sizes with --dim"
            )


def _groups(plan: Plan, candidates: dict[str, list[int]]) -> list[list[str]]:
    """Keys varied together: an input's spatial axes (so images stay square), else one at a time."""
    groups: list[list[str]] = []
    placed: set[str] = set()
    for key in candidates:
        if key in placed:
            continue
        group = [key]
        if _kind(key, plan) == "image":
            group += [k for k in candidates if k != key and k not in placed and _kind(k, plan) == "image"]
        groups.append(group)
        placed.update(group)
    # Batch-like keys last: a batch of 2 rarely makes a model run that 1 does not.
    return sorted(groups, key=lambda g: _kind(g[0], plan) == "batch")


def _kind(key: str, plan: Plan) -> str:
    places = free_keys(plan.specs).get(key, [])
    return _axis_kind(places[0][0], places[0][1], plan.roles) if places else "other"


def _axis_kind(spec: InputSpec, axis: int, roles: dict[str, Role]) -> str:
    """batch, sequence, image, signal or other: which plausible sizes to try for an axis."""
    rank = len(spec.dims or ())
    kind = roles[spec.name].kind
    if kind == "state":
        return "batch"
    if kind == "sequence-first":  # a time-major recurrent input: (sequence, batch, features)
        return {0: "sequence", 1: "batch"}.get(axis, "other")
    if axis == 0 and rank >= 2 and not LENGTH_NAME.search(str(spec.dims[0] if spec.dims else "")):
        return "batch"
    if kind in ("tokens", "mask", "positions", "segments", "int", "bool") and rank >= 1:
        return "sequence"
    if spec.dtype.kind != "f":
        return "other"
    if rank == 4:
        channels_last = spec.fixed(3) is not None and spec.fixed(3) <= 4 and spec.fixed(1) is None  # type: ignore[operator]
        if axis in ((1, 2) if channels_last else (2, 3)):
            return "image"
    if rank == 2 and axis == 1:
        return "signal"
    if rank == 3 and axis <= 1:
        return "sequence"
    return "other"


def _candidates(key: str, places, roles: dict[str, Role], hints: list[int]) -> list[int]:
    kind = _axis_kind(places[0][0], places[0][1], roles)
    base = {
        "batch": BATCH_SIZES,
        "sequence": SEQUENCE_SIZES,
        "image": tuple(hints) + IMAGE_SIZES,
        "signal": SIGNAL_SIZES,
    }.get(kind, OTHER_SIZES)
    return list(dict.fromkeys(base))


def _metadata_sizes(model: onnx.ModelProto) -> list[int]:
    """Sizes the model's metadata mentions (e.g. Ultralytics' imgsz "[320, 320]"), largest-first order kept."""
    sizes: list[int] = []
    for prop in model.metadata_props:
        if not re.search(r"size|shape|height|width|imgsz|resolution", prop.key, re.IGNORECASE):
            continue
        try:
            value = ast.literal_eval(prop.value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        sizes += [int(v) for v in values if isinstance(v, int) and 8 <= v <= 4096]
    return list(dict.fromkeys(sizes))


def model_hints(
    model: onnx.ModelProto, specs: Sequence[InputSpec], keys: dict[str, list[tuple[InputSpec, int]]]
) -> dict[str, tuple[int, str]]:
    """Sizes the model itself fixes: a metadata entry named like the dimension, or a consumer whose
    constant weight fixes the axis (a MatMul's rows, a Conv's input channels, an LSTM's input size)."""
    out: dict[str, tuple[int, str]] = {}
    meta = {p.key.lower(): p.value.strip() for p in model.metadata_props}
    for key in keys:
        value = meta.get(key.lower())
        if value is not None and value.isdigit() and int(value) > 0:
            out[key] = (int(value), "metadata")
    constants = _constant_shapes(model.graph)
    consumers = _consumers(model.graph)
    for s in specs:
        for node, slot in _follow(s.name, consumers, {"Cast", "Identity"}):
            for axis, size in _fixed_by(node, slot, len(s.dims or ()), constants).items():
                if s.dims and axis < len(s.dims) and not isinstance(s.dims[axis], int):
                    out.setdefault(s.key(axis), (size, "graph"))
    return out


def _fixed_by(
    node: onnx.NodeProto, slot: int, rank: int, constants: dict[str, tuple[int, ...]]
) -> dict[int, int]:
    """The axes of input slot that node's constant weight fixes, and their sizes."""
    if slot != 0 or len(node.input) < 2 or node.input[1] not in constants or rank == 0:
        return {}
    w = constants[node.input[1]]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul" and len(w) == 2:
        return {rank - 1: w[0]}
    if node.op_type == "Gemm" and len(w) == 2 and rank == 2:
        return {0 if attrs.get("transA") else 1: w[1] if attrs.get("transB") else w[0]}
    if node.op_type == "Conv" and len(w) >= 3 and rank == len(w):
        return {1: w[1] * int(attrs.get("group", 1))}
    if node.op_type in ("LSTM", "GRU", "RNN") and len(w) == 3 and rank == 3:
        return {2: w[2]}
    return {}


def input_roles(model: onnx.ModelProto, specs: Sequence[InputSpec]) -> dict[str, Role]:
    """Each input's role, from where the graph sends it and, failing that, its name."""
    constants = _constant_shapes(model.graph)
    values = _constant_values(model.graph)
    consumers = _consumers(model.graph)
    roles = {}
    for s in specs:
        uses = _follow(s.name, consumers, _PASS_THROUGH)
        roles[s.name] = _role(s, uses, constants, values)
    return roles


def _role(spec: InputSpec, uses, constants, values) -> Role:
    if spec.dtype == np.bool_:
        return Role("bool")
    if spec.dtype.kind == "f":
        recurrent = [(n, slot) for n, slot in uses if n.op_type in ("LSTM", "GRU", "RNN")]
        if any(slot in (5, 6) for _, slot in recurrent) or _STATE.search(spec.name):
            return Role("state")
        time_major = any(slot == 0 and not _layout(n) for n, slot in recurrent)
        return Role("sequence-first") if time_major else Role("float")
    if _MASK.search(spec.name):
        return Role("mask")
    if _POSITION.search(spec.name):
        return Role("positions")
    if _SEGMENT.search(spec.name):
        return Role("segments")
    rows = [
        constants[n.input[0]][0]
        for n, slot in uses
        if n.op_type == "Gather" and slot == 1 and n.input[0] in constants and constants[n.input[0]]
    ]
    if rows:
        return Role("tokens", high=min(rows))
    compared = [
        int(v)
        for n, _ in uses
        if n.op_type in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")
        for i in n.input
        if i in values
        for v in values[i]
    ]
    if compared:
        return Role("choice", choices=tuple(dict.fromkeys(compared)))
    return Role("int")


def _layout(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "layout"), 0)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Every (node, input slot) that reads a name, in this graph and the subgraphs under it."""
    from onnxq.graph.select import iter_graphs

    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for g in iter_graphs(graph):
        for node in g.node:
            for slot, name in enumerate(node.input):
                if name:
                    out.setdefault(name, []).append((node, slot))
    return out


def _follow(name: str, consumers, through: set[str]) -> list[tuple[onnx.NodeProto, int]]:
    """The uses of a value, looking through ops that pass it on (as `through` lists)."""
    out, frontier, seen = [], [name], {name}
    while frontier:
        value = frontier.pop()
        for node, slot in consumers.get(value, []):
            if node.op_type in through and slot == 0:
                fresh = [o for o in node.output if o and o not in seen]
                seen.update(fresh)
                frontier.extend(fresh)
            else:
                out.append((node, slot))
    return out


def _constant_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """The shapes of the graph's initializers and Constant outputs, without decoding them."""
    out = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = tuple(int(d) for d in a.t.dims)
    return out


def _constant_values(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Small integer constants (at most 4 values): what an input may be compared with."""
    from onnx import numpy_helper

    tensors = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    t = onnx.TensorProto()
                    t.CopyFrom(a.t)
                    t.name = node.output[0]
                    tensors.append(t)
    out = {}
    for t in tensors:
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and int(np.prod(t.dims)) <= 4:
            out[t.name] = [int(v) for v in numpy_helper.to_array(t).ravel()]
    return out


def _hint(plan: Plan, first_error: str) -> str:
    """One line: that nothing ran, what failed first, and the --dim to pass."""
    keys = free_keys(plan.specs)
    free = [k for k in keys if plan.sources.get(k) == "search"]
    if free:
        by_input = ", ".join(dict.fromkeys(keys[k][0][0].name for k in free))
        dims = " ".join(f"--dim '{k}=SIZE'" for k in free)
        fix = f"give the sizes of input {by_input}: {dims}, or pass real inputs with --inputs FILE.npz"
    else:
        fix = "pass real inputs with --inputs FILE.npz (or --calibration)"
    reason = first_error.removeprefix("onnxruntime failed on the synthetic inputs: ")
    return (
        f"onnxruntime could not run the float model on synthetic inputs ({plan.tries} tries; first: "
        f"{reason[:200]}); {fix}"
    )
