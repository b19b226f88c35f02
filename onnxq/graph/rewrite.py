"""Replace each chosen weight by its storage format's decoder call, in place.

model' = model with every weight w replaced by the nodes that the format's encode
builds, one call per graph and batch_key for a format that batches, which
rebuilds all such weights; the decoder functions are added once, and the model's
opset is kept (only the "onnxq" domain of the local functions is added, if the
format has any). A format with replace_consumer may replace the weight's readers
instead (a fused matrix product, an embedding lookup that unpacks only its rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from onnxq.graph.select import Weight
from onnxq.quant import layout
from onnxq.quant.quantize import QuantizedTensor
from onnxq.storage.base import DOMAIN, ROWS_PREFIX, Piece, StorageFormat, WholeWeights, stores_whole


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def grouped_shape(weight: Weight, groups: int) -> tuple[tuple[int, ...], list[int] | None]:
    """The shape the decoder builds (channel axis first), and the perm back, if any."""
    shape = tuple(weight.array.shape)
    if groups == 1 or weight.axis == 0:
        return shape, None
    moved = (shape[weight.axis], *shape[: weight.axis], *shape[weight.axis + 1 :])
    perm = list(range(1, weight.axis + 1)) + [0] + list(range(weight.axis + 1, len(shape)))
    return moved, perm


@dataclass
class _Edit:
    """What the rewrite of one model gathers on its way: the functions, the graphs' replaced
    initializers, the batches of whole weights, and what the report should hear."""

    model: onnx.ModelProto
    opset: int
    functions: dict[str, onnx.FunctionProto]
    replaced: dict[int, tuple[onnx.GraphProto, set[str]]] = field(default_factory=dict)
    batches: dict[tuple, tuple[onnx.GraphProto, list[list]]] = field(default_factory=dict)
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    packed: list[str] = field(default_factory=list)  # Gather tables whose rows stay packed
    domains: set[str] = field(default_factory=set)

    def remove(self, graph: onnx.GraphProto, name: str) -> None:
        self.replaced.setdefault(id(graph), (graph, set()))[1].add(name)

    def add_functions(self, functions, replace: bool = False) -> None:
        for function in functions:
            if replace:
                self.functions[function.name] = function
            else:
                self.functions.setdefault(function.name, function)


def replace_weights(
    model: onnx.ModelProto,
    items: list[tuple[Weight, QuantizedTensor]],
    fmt: StorageFormat,
    block: int | None = None,
    packed_rows: bool = True,
) -> list[str]:
    """Swap every weight for its decoder call, and add the decoder functions.

    A format whose replace_consumer fuses the weight into its readers does so
    where it can; the notes say where it could not, and the weight is stored whole. items is
    emptied as it goes, and so is each batch once stored: a caller that keeps no other
    reference to the codes lets them go as the model fills.
    """
    edit = _Edit(model, default_opset(model), {f.name: f for f in model.functions})
    whole = stores_whole(fmt)
    items.reverse()
    while items:
        weight, q = items.pop()
        # A weight the blocks do not split was quantized per channel (group_rows): no block for it.
        own = layout.block_size(weight, block) if block else None
        result = _replace_consumers(weight.graph, weight, q, fmt, own, edit.opset, packed_rows)
        if isinstance(result, tuple):
            edit.remove(weight.graph, weight.name)
            new_nodes, called = result
            edit.domains.update(n.domain for n in new_nodes)
            if any(n.op_type.startswith(ROWS_PREFIX) for n in new_nodes):
                edit.packed.append(weight.name)
            edit.add_functions(called)
            continue
        if result is not None:
            edit.fallbacks.setdefault(result, []).append(weight.name)
        _store_whole(edit, whole, weight, q)
    for graph, chunks in edit.batches.values():
        for batch in chunks:
            _insert_batch(edit, graph, whole, batch)
            batch.clear()
    _finish(edit)
    return _notes(edit, fmt, whole)


def _store_whole(edit: _Edit, whole: WholeWeights, weight: Weight, q: QuantizedTensor) -> None:
    """The weight's decoder now, or in its batch later; the weight itself goes."""
    graph = weight.graph
    piece, tail = _piece(whole, weight, q)
    if weight.constant_node is not None:
        graph.node.remove(weight.constant_node)
    else:
        edit.remove(graph, weight.name)
    key = whole.batch_key(q)
    if key is None:
        inits, nodes, called = whole.encode([piece], edit.opset, weight.name)
        _insert(edit.model, graph, inits, [*nodes, *tail])
        edit.add_functions(called)
        return
    chunks = edit.batches.setdefault((id(graph), key), (graph, [[]]))[1]
    if chunks[-1] and sum(p.q.codes.size for p, _ in chunks[-1]) + q.codes.size > whole.BATCH_WEIGHTS:
        chunks.append([])
    chunks[-1].append((piece, tail))


def _piece(whole: WholeWeights, weight: Weight, q: QuantizedTensor) -> tuple[Piece, list[onnx.NodeProto]]:
    """What the decoder builds, and the Transpose / Cast after it that make the weight itself."""
    if whole.CHANNEL_FIRST:
        shape, perm = grouped_shape(weight, q.groups)
        axis = 0
    else:
        shape, perm, axis = tuple(weight.array.shape), None, weight.axis
    name = weight.name
    dtype = onnx.helper.np_dtype_to_tensor_dtype(weight.array.dtype)
    tail: list[onnx.NodeProto] = []
    out = name
    if dtype != onnx.TensorProto.FLOAT:
        tail.insert(0, helper.make_node("Cast", [f"{name}.onnxq.float"], [out], to=dtype))
        out = f"{name}.onnxq.float"
    if perm is not None:
        tail.insert(0, helper.make_node("Transpose", [f"{name}.onnxq.grouped"], [out], perm=perm))
        out = f"{name}.onnxq.grouped"
    return Piece(q, name, out, shape, axis), tail


def _finish(edit: _Edit) -> None:
    """Drop the replaced initializers (and IR < 4 inputs), set the functions and the domains."""
    for graph, names in edit.replaced.values():
        # Deleted in place, from the end: rebuilding the list copied every tensor it kept, so the
        # packed weights were held twice (0.29 GB more at 468M, the default command's peak).
        for entries in (graph.initializer, graph.input):
            for i in reversed(range(len(entries))):
                if entries[i].name in names:
                    del entries[i]
    model = edit.model
    del model.functions[:]
    model.functions.extend(edit.functions.values())
    domains = edit.domains | ({DOMAIN} if any(f.domain == DOMAIN for f in edit.functions.values()) else set())
    for domain in sorted(domains):
        if not any(i.domain == domain for i in model.opset_import):
            model.opset_import.append(helper.make_opsetid(domain, 1))


def _notes(edit: _Edit, fmt: StorageFormat, whole: WholeWeights) -> list[str]:
    notes = [
        f"{len(names)} weights stored as {whole.NAME} instead of {fmt.NAME}: {why} (e.g. {names[0]})"
        for why, names in edit.fallbacks.items()
    ]
    if edit.packed:
        notes.append(
            f"{len(edit.packed)} embedding tables keep their rows packed in memory; only the gathered "
            f"rows are unpacked, at run time (e.g. {edit.packed[0]}; --no-packed-rows folds them whole)"
        )
    return notes


def _insert_batch(edit: _Edit, graph: onnx.GraphProto, whole: WholeWeights, batch: list) -> None:
    """One decoder call for a batch of (piece, tail nodes), under a fresh name."""
    name = base = whole.call_name(batch[0][0].q)
    suffix = 0
    while name in edit.functions:  # another batch of the same kind: a larger one, or in another graph
        suffix += 1
        name = f"{base}_{suffix}"
    inits, nodes, called = whole.encode([piece for piece, _ in batch], edit.opset, name)
    _insert(edit.model, graph, inits, [*nodes, *(node for _, tail in batch for node in tail)])
    edit.add_functions(called, replace=True)


def _insert(model: onnx.ModelProto, graph: onnx.GraphProto, inits, nodes: list[onnx.NodeProto]) -> None:
    """Add a decoder's initializers and nodes to the graph, the nodes first (they make the weights)."""
    graph.initializer.extend(inits)
    if model.ir_version < 4:  # before IR 4, every initializer is also a graph input
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits)
    for node in reversed(nodes):
        graph.node.insert(0, node)


def _replace_consumers(
    graph: onnx.GraphProto, weight: Weight, q: QuantizedTensor, fmt, block, opset, packed_rows
):
    """Replace every node that reads the weight by the format's node.

    Returns (the new nodes, the functions they call) when they were replaced; else
    why not (a fallback the report notes), or None when storing the weight whole is
    the format's own way for it (fmt.REPLACES_READERS false).
    """
    if weight.constant_node is not None:
        return "the weight is a Constant node" if fmt.REPLACES_READERS else None
    consumers = [n for n in graph.node if weight.name in n.input]
    results = [fmt.replace_consumer(q, weight, n, block, opset, packed_rows) for n in consumers]
    if not consumers or not all(isinstance(r, tuple) for r in results):
        why = next((r for r in results if isinstance(r, str)), None)
        return why if consumers or not fmt.REPLACES_READERS else "nothing reads it"
    added: set[str] = set()
    functions: list[onnx.FunctionProto] = []
    for old, (inits, new, called) in zip(consumers, results):  # type: ignore[misc]
        graph.node.insert(list(graph.node).index(old), new)
        graph.node.remove(old)
        fresh = [t for t in inits if t.name not in added]
        graph.initializer.extend(fresh)
        added.update(t.name for t in fresh)
        functions.extend(called)
    return [new for _, new, _ in results], functions


def inline_decoders(model: onnx.ModelProto) -> onnx.ModelProto:
    """Expand the decoder calls into plain nodes, for IR versions before local functions."""
    import onnx.inliner

    inlined = onnx.inliner.inline_local_functions(model)
    kept = [i for i in inlined.opset_import if i.domain != DOMAIN]
    del inlined.opset_import[:]
    inlined.opset_import.extend(kept)
    del inlined.functions[:]
    return inlined
