"""Validation block by block, for a model too large to hold twice: its graph runs as a chain of
segments, each a session over its own nodes and at most BLOCK_BYTES of their weights, fed what
the segments before it made. Every sample goes through a segment before the next one opens, and
only the tensors that later segments or the graph's outputs read are kept between them.

A node that only rebuilds a weight (its inputs are all weights, like onnxq's decoders) runs in
the segment of its first reader, so that the rebuilt weight is not carried. Graphs with control
flow (If, Loop, Scan) are not cut: their bodies may read any tensor of the graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

from onnxq import runtime
from onnxq.data.samples import Sample
from onnxq.graph import external, io

BLOCK_BYTES = 128 << 20  # the weights of one segment, at most (a larger single node is one segment)


@dataclass
class Segment:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)  # initializers its nodes read
    inputs: list[str] = field(default_factory=list)  # graph inputs or earlier segments' tensors
    outputs: list[str] = field(default_factory=list)  # what later segments or the graph's outputs read
    size: int = 0  # bytes of its weights


def cuttable(graph: onnx.GraphProto) -> bool:
    """Whether the graph can run in segments: no node holds a subgraph, and every output is made
    by a node or fed (not an initializer, which no segment would hand on)."""
    subgraphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if any(a.type in subgraphs for node in graph.node for a in node.attribute):
        return False
    made = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    return all(o.name in made for o in graph.output)


def elements(graph: onnx.GraphProto) -> int:
    """How many values the graph's initializers hold."""
    return sum(math.prod(t.dims) for t in graph.initializer)


def plan(graph: onnx.GraphProto, budget: int = BLOCK_BYTES) -> list[Segment]:
    """The graph's nodes in segments of at most budget bytes of weights, in an order where each
    weight-only node comes right before its first reader. The graph must be cuttable."""
    sizes = {t.name: external.stored_bytes(t) for t in graph.initializer}
    segments = [Segment()]
    for unit in _units(graph, set(sizes)):
        new = {n for node in unit for n in node.input if n in sizes} - set(segments[-1].weights)
        grow = sum(sizes[n] for n in new)
        if segments[-1].nodes and segments[-1].size + grow > budget:
            segments.append(Segment())
            new = {n for node in unit for n in node.input if n in sizes}
            grow = sum(sizes[n] for n in new)
        segments[-1].nodes.extend(unit)
        segments[-1].weights.extend(sorted(new))
        segments[-1].size += grow
    position = {id(node): i for i, node in enumerate(graph.node)}
    # The graph's own order inside a segment: the 468M decoder's compressed model, unfolded, took
    # 9.8 CPU-s for two samples with each decoder beside its reader, 6.3 in the graph's order.
    for seg in segments:
        seg.nodes.sort(key=lambda node: position[id(node)])
    _connect(segments, graph, set(sizes))
    return [s for s in segments if s.nodes]


def _units(graph: onnx.GraphProto, weights: set[str]) -> list[list[onnx.NodeProto]]:
    """The nodes as units that stay in one segment: each node that reads data, after the
    weight-only nodes it needs and no segment has run yet."""
    made_by = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
    constant = [False] * len(graph.node)
    for i, node in enumerate(graph.node):
        constant[i] = all(n in weights or (n in made_by and constant[made_by[n]]) for n in node.input if n)
    done = [False] * len(graph.node)

    def needs(i: int) -> list[onnx.NodeProto]:
        """The weight-only nodes that node i needs and no unit has taken, in an order that runs
        (depth first, without recursion: a chain of such nodes may be long)."""
        unit, stack = [], [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if expanded:
                unit.append(graph.node[j])
                continue
            stack.append((j, True))
            for n in reversed(graph.node[j].input):
                k = made_by.get(n)
                if k is not None and constant[k] and not done[k]:
                    done[k] = True
                    stack.append((k, False))
        return unit[:-1]  # node i itself comes last

    units = []
    for i, node in enumerate(graph.node):
        if constant[i] or done[i]:
            continue
        unit = needs(i)
        done[i] = True
        units.append([*unit, node])
    rest = [node for i, node in enumerate(graph.node) if not done[i]]  # weight-only nodes no node reads
    return units + ([rest] if rest else [])


def _connect(segments: list[Segment], graph: onnx.GraphProto, weights: set[str]) -> None:
    """Each segment's inputs and outputs: the tensors that cross from one segment to a later one."""
    wanted = {o.name for o in graph.output}
    for k in range(len(segments) - 1, -1, -1):
        seg = segments[k]
        made = {o for node in seg.nodes for o in node.output if o}
        read = {n for node in seg.nodes for n in node.input if n}
        seg.outputs = sorted(made & wanted)
        seg.inputs = sorted(read - made - weights)
        wanted |= set(seg.inputs)


def tail(seg: Segment, weight: str, weights: set[str]) -> Segment:
    """The part of seg from the first node that reads weight to its end: what a change of that
    weight alone can move. Its inputs are seg's and the tensors its earlier nodes made; its outputs
    seg's outputs that the tail makes."""
    start = next(i for i, node in enumerate(seg.nodes) if weight in node.input)
    nodes = seg.nodes[start:]
    made = {o for node in nodes for o in node.output if o}
    read = {n for node in nodes for n in node.input if n}
    return Segment(
        nodes=nodes,
        weights=[n for n in seg.weights if n in read],
        inputs=sorted(read - made - weights),
        outputs=[o for o in seg.outputs if o in made],
    )


@dataclass
class Described:
    model: onnx.ModelProto  # read lazily: weights over external.LAZY_BYTES stay in their files
    inputs: list[str]  # the graph's inputs but initializers
    outputs: list[str]
    cuttable: bool
    weight_bytes: int  # of every initializer


def describe(path: Path) -> Described:
    """What block validation needs to know of the model at path before it runs."""
    model, _ = io.read_model(path, lazy=True)
    weights = {t.name for t in model.graph.initializer}
    return Described(
        model,
        [i.name for i in model.graph.input if i.name not in weights],
        [o.name for o in model.graph.output],
        cuttable(model.graph),
        sum(external.stored_bytes(t) for t in model.graph.initializer),
    )


def run(
    path: Path,
    samples: Sequence[Sample],
    names: list[str],
    literal: bool,
    what: str,
    budget: int = BLOCK_BYTES,
    model: onnx.ModelProto | None = None,
) -> list[list]:
    """The outputs `names` of the model at path for every sample, segment by segment (of at
    most budget bytes of stored weights: a compressed model's are decoded as they run). model:
    the one at path, read lazily (describe), when the caller runs it more than once."""
    if model is None:
        model, _ = io.read_model(path, lazy=True)
    folder = path.resolve().parent
    segments = plan(model.graph, budget)

    def stored(tensor: onnx.TensorProto) -> np.ndarray | None:
        return external.mapped_array(tensor, folder) if uses_external_data(tensor) else None

    alive = [dict(sample) for sample in samples]
    for k, seg in enumerate(segments):
        proto, arrays = segment_model(model, seg, alive[0] if alive else {}, stored)
        if len(alive) > 1:
            proto, arrays = _decoded(proto, arrays, literal)
        # The weights fed in place (runtime.Fed), not copied into the session, and without
        # prepacking: not copied into packed panels either (its runs are short).
        sess = runtime.Fed(proto, arrays, spin=False, literal=literal, prepack=False)
        del arrays
        later = {n for s in segments[k + 1 :] for n in s.inputs} | set(names)
        for values in alive:
            ys = runtime.run(sess, {n: values[n] for n in seg.inputs}, seg.outputs, what)
            values.update(zip(seg.outputs, ys))
            for n in [n for n in values if n not in later]:
                del values[n]
        del sess
        runtime.give_back_memory()
    return [[values[n] for n in names] for values in alive]


def segment_model(
    model: onnx.ModelProto, seg: Segment, example: dict, held: Callable[[onnx.TensorProto], np.ndarray | None]
) -> tuple[onnx.ModelProto, dict]:
    """A model of the segment's nodes, and the arrays of the weights it holds as stubs: those for
    which held(tensor) gives one (example: a sample's tensors, whose types name inputs the graph
    does not type)."""
    out = onnx.ModelProto()
    runtime.copy_fields(model, out, skip="graph")
    graph = out.graph
    graph.name = model.graph.name
    graph.node.extend(seg.nodes)
    known = {v.name: v for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    for name in seg.inputs:
        graph.input.append(known.get(name) or _value_info(name, example[name]))
    graph.output.extend(known.get(n) or onnx.ValueInfoProto(name=n) for n in seg.outputs)
    inside = {o for node in seg.nodes for o in node.output} - set(seg.outputs)
    # Typed, as in the model: without them the same runs took 9.8 CPU-s instead of 7.8.
    graph.value_info.extend(v for v in model.graph.value_info if v.name in inside)
    tensors = {t.name: t for t in model.graph.initializer}
    arrays = {}
    for name in seg.weights:
        tensor = tensors[name]
        graph.initializer.add().CopyFrom(tensor)
        value = held(tensor)
        if value is not None:
            arrays[name] = value
    return (runtime.stubbed(out, arrays) if arrays else out), arrays


def _decoded(model: onnx.ModelProto, arrays: dict, literal: bool) -> tuple[onnx.ModelProto, dict]:
    """The segment model with its weight-only nodes (decoders) run once, in a session of their
    own, and what they made read as weights; and the arrays of its stubs. Unfolded, every run of
    a segment decodes its weights again (about 5 CPU-s per run of the 468M decoder's output)."""
    graph = model.graph
    fixed, constant = [], {t.name for t in graph.initializer}
    for node in graph.node:
        if all(n in constant for n in node.input if n):
            fixed.append(node)
            constant.update(o for o in node.output if o)
    rest = [node for node in graph.node if not any(node is f for f in fixed)]
    read = {n for node in rest for n in node.input}
    made = sorted({o for node in fixed for o in node.output if o in read})
    if not made or constant & {o.name for o in graph.output}:
        return model, arrays  # nothing to decode, or a weight the graph hands on as it is
    values = _run_fixed(model, fixed, made, constant, arrays, literal)
    out = onnx.ModelProto()
    runtime.copy_fields(model, out, skip="graph")
    runtime.copy_fields(graph, out.graph, skip="node")
    out.graph.node.extend(rest)
    kept = [t for t in out.graph.initializer if t.name in read]
    infos = [v for v in out.graph.value_info if v.name not in constant]
    del out.graph.initializer[:], out.graph.value_info[:]
    out.graph.initializer.extend(kept)
    out.graph.value_info.extend(infos)
    for name, value in values.items():
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        out.graph.initializer.add(name=name, data_type=elem, dims=value.shape)
    arrays = {n: a for n, a in arrays.items() if n in read} | values
    return runtime.stubbed(out, values), arrays


def _run_fixed(model, fixed: list, made: list[str], constant: set[str], arrays: dict, literal: bool) -> dict:
    """The values `made` of the weight-only nodes `fixed` of the segment model."""
    decode = onnx.ModelProto()
    runtime.copy_fields(model, decode, skip="graph")
    decode.graph.node.extend(fixed)
    needed = {n for node in fixed for n in node.input}  # onnxruntime drops the initializers no node reads
    decode.graph.initializer.extend(t for t in model.graph.initializer if t.name in needed)
    decode.graph.value_info.extend(v for v in model.graph.value_info if v.name in constant)
    decode.graph.output.extend(onnx.ValueInfoProto(name=n) for n in made)
    mine = {n: a for n, a in arrays.items() if n in needed}
    sess = runtime.Fed(decode, mine, spin=False, literal=literal, prepack=False)
    return dict(zip(made, runtime.run(sess, {}, made, "weights of the model")))


def _value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype)
    return onnx.helper.make_tensor_value_info(name, elem, None)
