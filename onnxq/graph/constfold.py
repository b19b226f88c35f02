"""Constant folding: a node whose inputs are all constants becomes the small tensor it computes.

Exporters leave whole subgraphs that compute pad sizes, shapes and axes from
constants (PyTorch's static padding is nine nodes per Pad). onnxruntime folds
them when a session is created; folding them in the file as well makes it
smaller and leaves the runtime the same graph. Only the main graph is folded,
and a tensor is written only when it is at most MAX_BYTES: a node that computes
a large constant (a ConstantOfShape of a big shape, a transposed weight) stays,
since its result would cost more bytes than the nodes. Values come from onnx's
reference evaluator, so this module needs no runtime.

Then small constants with equal values are shared (share_constants): exporters
write a Constant node per use (a Clip's 0 and 6 in every block), each with two
long names. onnxruntime shares them too when it creates a session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.graph.select import iter_graphs

MAX_BYTES = 256  # a folded tensor's size at most: a shape, pads, axes or a scalar
MAX_EVALUATED = 1 << 16  # elements of any evaluated tensor, so that folding costs no memory
# Ops whose result is not a function of their inputs, or that hold graphs.
NOT_FOLDED = {
    "Constant",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
    "If",
    "Loop",
    "Scan",
}


@dataclass
class Folded:
    """What fold_constants did, and share_constants (simplify does both)."""

    nodes: int = 0  # nodes removed, Constant nodes left without consumers included
    tensors: int = 0  # tensors written in their place
    shared: int = 0  # small constants replaced by an equal one (share_constants)
    kept: int = 0  # the distinct values those were equal to

    def notes(self) -> list[str]:
        out = []
        if self.nodes:
            out.append(
                f"folded {self.nodes} nodes that compute constants (shapes, pads, axes) into "
                f"{self.tensors} small tensors; --no-fold-constants keeps them"
            )
        if self.shared:
            out.append(
                f"shared {self.shared} small constants that repeat {self.kept} values; "
                f"--no-fold-constants keeps them"
            )
        return out


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto | onnx.TensorProto]:
    # A tensor still in its external file (read lazily, external.py) is large: never folded.
    out: dict[str, onnx.NodeProto | onnx.TensorProto] = {
        t.name: t for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
    }
    inputs = {i.name for i in graph.input}
    for name in inputs:  # an initializer that is also a graph input can be overridden
        out.pop(name, None)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            out[node.output[0]] = node
    return out


def _output_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Elements of each main-graph tensor whose shape inference (with constants propagated) knows it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 (a model shape inference cannot read: fold nothing)
        return {}
    sizes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            sizes[info.name] = int(np.prod([d.dim_value for d in dims]))
    return sizes


def _foldable(graph: onnx.GraphProto, constants, sizes: dict[str, int] | None) -> list[int]:
    """Positions of the nodes whose every input is a constant or an earlier foldable node's output.

    With sizes, every output's size must be known and small, so that evaluating them costs little.
    """
    known = {name for name, c in constants.items() if _elements(c) <= MAX_EVALUATED}
    nodes = []
    for position, node in enumerate(graph.node):  # a valid graph is in topological order
        if node.domain not in ("", "ai.onnx") or node.op_type in NOT_FOLDED:
            continue
        if sizes is not None and not all(
            sizes.get(o, MAX_EVALUATED + 1) <= MAX_EVALUATED for o in node.output if o
        ):
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if node.input and all(not i or i in known for i in node.input):
            nodes.append(position)
            known.update(o for o in node.output if o)
    return nodes


def _elements(constant: onnx.NodeProto | onnx.TensorProto) -> int:
    if isinstance(constant, onnx.TensorProto):
        return int(np.prod(constant.dims))
    attr = constant.attribute[0]
    if attr.name == "value":
        return int(np.prod(attr.t.dims))
    return max(len(attr.floats), len(attr.ints), len(attr.strings), 1)


def _used_names(model: onnx.ModelProto, skip: set[int]) -> set[str]:
    """Every name read by a node, in any graph, but the main graph's nodes at skip; and its outputs."""
    used = {o.name for o in model.graph.output}
    for position, node in enumerate(model.graph.node):
        if position not in skip:
            used.update(node.input)
    for graph in list(iter_graphs(model.graph))[1:]:
        for node in graph.node:
            used.update(node.input)
    return used


def _evaluate(graph: onnx.GraphProto, nodes, constants, opsets) -> dict[str, np.ndarray] | None:
    """Every output of nodes, or None when the reference evaluator cannot run them."""
    from onnx.reference import ReferenceEvaluator

    needed = {i for n in nodes for i in n.input if i} - {o for n in nodes for o in n.output}
    sub = onnx.helper.make_graph(
        [c for name, c in constants.items() if name in needed and isinstance(c, onnx.NodeProto)]
        + list(nodes),
        "constants",
        [],
        [onnx.helper.make_empty_tensor_value_info(o) for n in nodes for o in n.output if o],
        [c for name, c in constants.items() if name in needed and isinstance(c, onnx.TensorProto)],
    )
    model = onnx.helper.make_model(sub, opset_imports=opsets)
    try:
        values = ReferenceEvaluator(model).run(None, {})
    except Exception:  # noqa: BLE001 (an op the evaluator lacks: leave the graph as it is)
        return None
    names = [o.name for o in sub.output]
    if not all(isinstance(v, np.ndarray) for v in values):
        return None
    return dict(zip(names, values))


def fold_constants(model: onnx.ModelProto) -> Folded:
    """Replace the main graph's constant-computing nodes by their small results, in place."""
    graph = model.graph
    constants = _constants(graph)
    if not _foldable(graph, constants, None):  # the common case, without shape inference
        return Folded()
    positions = _foldable(graph, constants, _output_sizes(model))
    nodes = [graph.node[p] for p in positions]
    if not nodes:
        return Folded()
    values = _evaluate(graph, nodes, constants, list(model.opset_import))
    if values is None:
        return Folded()
    # Keep in the graph each node whose result is needed outside and too large, until stable.
    folded = dict(zip(positions, nodes))
    outputs = {o.name for o in graph.output}  # their nodes stay: an output should not be an initializer
    while True:
        used = _used_names(model, set(folded))
        big = [
            key
            for key, n in folded.items()
            if any(o in outputs or (o in used and values[o].nbytes > MAX_BYTES) for o in n.output if o)
        ]
        if not big:
            break
        for key in big:
            del folded[key]
    if not folded:
        return Folded()
    new = [  # used is that of the final folded set: the loop ends with nothing dropped
        numpy_helper.from_array(np.asarray(values[o]), o)
        for n in folded.values()
        for o in n.output
        if o in used
    ]
    # Constant nodes and initializers that only the folded nodes read go too.
    dead = {name for name in constants if name not in used} & {i for n in folded.values() for i in n.input}
    gone = set(folded) | {
        p for p, n in enumerate(graph.node) if n.op_type == "Constant" and n.output[0] in dead
    }
    for p in sorted(gone, reverse=True):
        del graph.node[p]
    _drop_named(graph.initializer, dead)
    _add_constants(model, new)
    return Folded(nodes=len(gone), tensors=len(new))


def simplify(model: onnx.ModelProto) -> Folded:
    """fold_constants, then share_constants: what --fold-constants does, in place."""
    folded = fold_constants(model)
    folded.shared, folded.kept = share_constants(model)
    return folded


def _value(constant: onnx.NodeProto | onnx.TensorProto) -> onnx.TensorProto | None:
    """A constant's tensor, if it is a plain dense one stored in the file."""
    if isinstance(constant, onnx.NodeProto):
        attr = constant.attribute[0] if len(constant.attribute) == 1 else None
        if attr is None or attr.name != "value":
            return None
        constant = attr.t
    return constant if constant.data_location != onnx.TensorProto.EXTERNAL else None


def share_constants(model: onnx.ModelProto) -> tuple[int, int]:
    """Make the main graph's readers of equal small constants read one of them, in place.

    Returns (constants replaced, distinct values kept). A constant read inside a
    subgraph, or that is a graph output, keeps its name. The kept value becomes
    an initializer (a Constant node first in the graph before IR 4), so every
    reader comes after it.
    """
    graph = model.graph
    protected = {o.name for o in graph.output}
    for sub in list(iter_graphs(graph))[1:]:
        for node in sub.node:
            protected.update(node.input)
    first: dict[tuple, str] = {}  # (type, dims, bytes) -> the name kept
    rename: dict[str, str] = {}
    for name, constant in _constants(graph).items():
        tensor = _value(constant)
        # Every element takes a byte at least: decode no weight just to find it is large.
        if tensor is None or name in protected or _elements(constant) > MAX_BYTES:
            continue
        array = numpy_helper.to_array(tensor)
        if array.nbytes > MAX_BYTES or array.dtype == object:
            continue
        key = (tensor.data_type, tuple(tensor.dims), array.tobytes())
        if key in first:
            rename[name] = first[key]
        else:
            first[key] = name
    if not rename:
        return 0, 0
    kept = set(rename.values())
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    tensors: list[onnx.TensorProto] = []  # the kept Constant nodes' values, in graph order
    for p in reversed(range(len(graph.node))):
        node = graph.node[p]
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        if node.output[0] in kept:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            tensors.insert(0, tensor)
        if node.output[0] in kept or node.output[0] in rename:
            del graph.node[p]
    _drop_named(graph.initializer, set(rename))
    _drop_named(graph.value_info, set(rename))
    _add_constants(model, tensors)
    return len(rename), len(kept)


def _drop_named(items, names: set[str]) -> None:
    """Delete the entries of a repeated field (initializers, value infos) whose name is in names."""
    for p in reversed(range(len(items))):
        if items[p].name in names:
            del items[p]


def _add_constants(model: onnx.ModelProto, tensors: list[onnx.TensorProto]) -> None:
    """Add named tensors to the main graph: initializers, or from IR 3 down Constant nodes first."""
    if model.ir_version >= 4:
        model.graph.initializer.extend(tensors)
    else:  # before IR 4 an initializer must also be a graph input
        for position, tensor in enumerate(tensors):
            model.graph.node.insert(
                position, onnx.helper.make_node("Constant", [], [tensor.name], value=tensor)
            )
