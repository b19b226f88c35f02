"""Find the weight tensors to compress, and say why each other float tensor is not.

A weight is a float initializer or Constant output, in the main graph or any
If/Loop/Scan body, whose every use is a weight input: Conv/ConvTranspose W,
Gemm A or B, either MatMul input, or Gather data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
# Float types listed as skipped rather than compressed.
UNSUPPORTED_FLOATS = {
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.FLOAT8E4M3FN: "float8e4m3fn",
    onnx.TensorProto.FLOAT8E4M3FNUZ: "float8e4m3fnuz",
    onnx.TensorProto.FLOAT8E5M2: "float8e5m2",
    onnx.TensorProto.FLOAT8E5M2FNUZ: "float8e5m2fnuz",
}
BIAS_SLOTS = {("Conv", 2), ("ConvTranspose", 2), ("Gemm", 2)}
GRAPH_OUTPUT = "graph output"  # the pseudo-node of a use as a graph output


@dataclass
class Weight:
    """A tensor chosen for compression."""

    name: str
    array: np.ndarray
    axis: int  # the output-channel axis
    graph: onnx.GraphProto  # where it is defined
    constant_node: onnx.NodeProto | None  # the Constant node that holds it, if any
    uses: list[str] = field(default_factory=list)  # "Conv W", ...


@dataclass(frozen=True)
class Skip:
    """A float tensor left as it is, and why."""

    name: str
    shape: tuple[int, ...]
    reason: str


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph under it, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def weight_axis(node: onnx.NodeProto, slot: int, rank: int) -> int | None:
    """The output-channel axis of a constant at this input, or None if not a weight input."""
    op = node.op_type if node.domain in ("", "ai.onnx") else None
    if op == "Conv" and slot == 1:
        return 0
    if op == "ConvTranspose" and slot == 1:
        return 1 if rank > 1 else 0
    if op == "Gemm" and slot in (0, 1):
        if slot == 0:  # A is (M, K), or (K, M) with transA: rows of the output
            return 1 if _attr(node, "transA", 0) else 0
        return 0 if _attr(node, "transB", 0) else 1  # B is (K, N), or (N, K) with transB
    if op == "MatMul" and slot in (0, 1):
        if rank < 2:
            return 0
        return rank - 1 if slot == 1 else rank - 2
    if op == "Gather" and slot == 0 and _attr(node, "axis", 0) == 0:
        return 0
    return None


def _uses(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            for slot, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append((node, slot))
        for out in graph.output:  # a graph output is a use that is not a weight input
            uses.setdefault(out.name, []).append((onnx.NodeProto(op_type=GRAPH_OUTPUT), 0))
    return uses


def _loop_body(node: onnx.NodeProto) -> onnx.GraphProto | None:
    if node.op_type != "Loop" or node.domain not in ("", "ai.onnx"):
        return None
    return next(
        (a.g for a in node.attribute if a.name == "body" and a.type == onnx.AttributeProto.GRAPH), None
    )


def effective_uses(
    name: str, uses: dict[str, list[tuple[onnx.NodeProto, int]]]
) -> list[tuple[onnx.NodeProto, int]]:
    """The uses of a value, where a Loop input that the body carries through unchanged counts as
    the body's own uses of it (exporters pass an LSTM's weights into its Loop that way)."""
    return _expand(uses.get(name, []), uses)


def _expand(
    direct: list[tuple[onnx.NodeProto, int]], uses: dict[str, list[tuple[onnx.NodeProto, int]]]
) -> list[tuple[onnx.NodeProto, int]]:
    out: list[tuple[onnx.NodeProto, int]] = []
    for node, slot in direct:
        inner = _carried_through(node, slot, uses)
        if inner is None:
            out.append((node, slot))
        else:  # inside the body, its one graph-output use is the carried copy itself
            out.extend(_expand([(n, s) for n, s in uses.get(inner, []) if n.op_type != GRAPH_OUTPUT], uses))
    return out


def _carried_through(node: onnx.NodeProto, slot: int, uses) -> str | None:
    """The body's name for a Loop input that the body returns unchanged and whose final value
    nobody reads, or None for any other use."""
    body = _loop_body(node) if slot >= 2 else None
    if body is None or slot >= len(body.input) or slot - 1 >= len(body.output):
        return None
    inner = body.input[slot].name
    final = node.output[slot - 2] if slot - 2 < len(node.output) else ""
    if body.output[slot - 1].name != inner or (final and uses.get(final)):
        return None
    return inner


def _candidates(model: onnx.ModelProto):
    for graph in iter_graphs(model.graph):
        for init in graph.initializer:
            yield init, graph, None
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        tensor = onnx.TensorProto()
                        tensor.CopyFrom(attr.t)
                        tensor.name = node.output[0]
                        yield tensor, graph, node


def find_weights(
    model: onnx.ModelProto,
    min_elements: int,
    exclude: Sequence[str] = (),
    read: Callable[[onnx.TensorProto], np.ndarray] = numpy_helper.to_array,
) -> tuple[list[Weight], list[Skip]]:
    """The weights to compress, and a reason for every float tensor left alone. read: how a
    weight's values are read (external.reader maps a file's data instead of loading it)."""
    patterns = [re.compile(p) for p in exclude]
    uses = _uses(model)
    weights: list[Weight] = []
    skips: list[Skip] = []
    for tensor, graph, const_node in _candidates(model):
        name = tensor.name
        shape = tuple(int(d) for d in tensor.dims)
        if tensor.data_type in UNSUPPORTED_FLOATS:
            kind = UNSUPPORTED_FLOATS[tensor.data_type]
            skips.append(Skip(name, shape, f"{kind} tensors are not supported yet"))
            continue
        if tensor.data_type not in FLOAT_TYPES:
            continue  # integer, bool and string tensors are shapes and indices, never weights
        consumers = effective_uses(name, uses)
        size = int(np.prod(shape)) if shape else 1

        def skip(reason: str) -> None:
            skips.append(Skip(name, shape, reason))  # noqa: B023 (used at once)

        if not consumers:
            skip("unused")
            continue
        axes = [weight_axis(node, slot, len(shape)) for node, slot in consumers]
        other = [(n, s) for (n, s), a in zip(consumers, axes) if a is None]
        if other:
            node, slot = other[0]
            if all((n.op_type, s) in BIAS_SLOTS for n, s in other):
                skip(f"bias of {node.op_type} (biases stay in float)")
            else:
                skip(f"feeds {node.op_type} input {slot}, which is not a weight input")
            continue
        if len(set(axes)) > 1:
            skip("used as a weight along different output axes")
            continue
        node_names = [n.name for n, _ in consumers]
        hit = next((p.pattern for p in patterns for s in [name, *node_names] if s and p.search(s)), None)
        if hit is not None:
            skip(f"excluded by --exclude {hit!r}")
            continue
        if size < min_elements:
            skip(f"{size} elements, fewer than --min-elements {min_elements}")
            continue
        weights.append(
            Weight(
                name=name,
                array=read(tensor),
                axis=int(axes[0]),  # type: ignore[arg-type]
                graph=graph,
                constant_node=const_node,
                uses=sorted({f"{n.op_type} input {s}" for n, s in consumers}),
            )
        )
    return weights, skips
