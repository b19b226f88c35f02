"""Replace each chosen weight by its storage format's decoder call, in place.

model' = model with every weight w replaced by fmt.encode(quantize(w)), or, for a
format with encode_batch (fold), with one call per graph and batch_key that
rebuilds all such weights; the decoder functions are added once, and the model's
opset is kept (only the "onnxq" domain of the local functions is added, if the
format has any). A format with replace_consumer may replace the weight's readers
instead (MatMulNBits, GatherBlockQuantized, fold's packed embedding rows).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxq.graph.select import Weight
from onnxq.quant.quantize import QuantizedTensor
from onnxq.storage import fold
from onnxq.storage.fold import DOMAIN


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


def replace_weights(
    model: onnx.ModelProto,
    items: list[tuple[Weight, QuantizedTensor]],
    fmt,
    block: int | None = None,
    packed_rows: bool = True,
) -> list[str]:
    """Swap every weight for its decoder call, and add the decoder functions.

    A format with replace_consumer (matmulnbits) replaces the weight's consumers
    instead, where it can; the notes say where it could not.
    """
    opset = default_opset(model)
    functions = {f.name: f for f in model.functions}
    replaced: dict[int, tuple[onnx.GraphProto, set[str]]] = {}
    fallbacks: dict[str, list[str]] = {}
    packed: list[str] = []  # Gather tables whose rows stay packed
    extra_domains: set[str] = set()
    batches: dict[tuple, tuple[onnx.GraphProto, list[list]]] = {}  # (graph, codebook, bits) -> chunks
    for weight, q in items:
        graph = weight.graph
        if hasattr(fmt, "replace_consumer"):
            result = _replace_consumers(graph, weight, q, fmt, block, opset, packed_rows)
            if isinstance(result, tuple):
                replaced.setdefault(id(graph), (graph, set()))[1].add(weight.name)
                new_nodes, called = result
                extra_domains.update(n.domain for n in new_nodes)
                if any(n.op_type.startswith(fold.ROWS_PREFIX) for n in new_nodes):
                    packed.append(weight.name)
                for function in called:
                    functions.setdefault(function.name, function)
                continue
            if result is not None:
                fallbacks.setdefault(result, []).append(weight.name)
        if fmt.CHANNEL_FIRST:
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
        if weight.constant_node is not None:
            graph.node.remove(weight.constant_node)
        else:
            replaced.setdefault(id(graph), (graph, set()))[1].add(name)
        if hasattr(fmt, "encode_batch"):
            chunks = batches.setdefault((id(graph), *fmt.batch_key(q)), (graph, [[]]))[1]
            if chunks[-1] and sum(p.codes.size for p, *_ in chunks[-1]) + q.codes.size > fmt.BATCH_WEIGHTS:
                chunks.append([])
            chunks[-1].append((q, out, shape, tail))
            continue
        inits, call = fmt.encode(q, name, out, shape, axis)
        _insert(model, graph, inits, [call, *tail])
        if call.op_type not in functions:
            for function in fmt.decoders(q, opset):
                functions.setdefault(function.name, function)
    for (_, codebook, bits), (graph, chunks) in batches.items():
        for batch in chunks:
            _insert_batch(model, graph, fmt, functions, codebook, bits, batch, opset)
    for graph, names in replaced.values():
        # One pass per graph: rebuilding the list per weight would copy every tensor each time.
        kept = [t for t in graph.initializer if t.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        kept_inputs = [i for i in graph.input if i.name not in names]
        del graph.input[:]
        graph.input.extend(kept_inputs)
    del model.functions[:]
    model.functions.extend(functions.values())
    domains = extra_domains | ({DOMAIN} if any(f.domain == DOMAIN for f in functions.values()) else set())
    for domain in sorted(domains):
        if not any(i.domain == domain for i in model.opset_import):
            model.opset_import.append(helper.make_opsetid(domain, 1))
    notes = [
        f"{len(names)} weights stored as fold instead of {fmt.NAME}: {why} (e.g. {names[0]})"
        for why, names in fallbacks.items()
    ]
    if packed:
        notes.append(
            f"{len(packed)} embedding tables keep their rows packed in memory; only the gathered "
            f"rows are unpacked, at run time (e.g. {packed[0]}; --no-packed-rows folds them whole)"
        )
    return notes


def _insert_batch(model, graph, fmt, functions, codebook: str, bits: int, batch: list, opset: int) -> None:
    """One decoder call for a batch of weights (q, output, shape, tail nodes), under a fresh name."""
    name = base = fmt.function_name(codebook, bits)
    suffix = 0
    while name in functions:  # another batch of the same kind: a larger one, or in another graph
        suffix += 1
        name = f"{base}_{suffix}"
    inits, call, called = fmt.encode_batch([(q, out, shape) for q, out, shape, _ in batch], opset, name)
    _insert(model, graph, inits, [call, *(node for *_, tail in batch for node in tail)])
    for function in called:
        functions[function.name] = function


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
    the format's own way for it (fmt.REPLACES_READERS false, as in fold).
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


def group_rows(weight: Weight, granularity: str, group_size: int | None = None) -> np.ndarray:
    """The weight as (groups, n): one row per output channel, or one row in all.

    With group_size G, each output channel's K weights (the input dimensions,
    flattened) are cut into K / G rows of G, so every block of G has its own
    parameters; G must divide K (see block_size).
    """
    a = weight.array.astype(np.float32, copy=False)
    if granularity == "tensor" or a.ndim < 2:
        return a.reshape(1, -1)
    rows = np.moveaxis(a, weight.axis, 0).reshape(a.shape[weight.axis], -1)
    if group_size and block_size(weight, group_size) == group_size:
        return rows.reshape(-1, group_size)
    return rows


def block_size(weight: Weight, group_size: int) -> int | None:
    """group_size if it splits each output channel of the weight evenly into several blocks, else None."""
    a = weight.array
    if a.ndim < 2:
        return None
    k = a.size // a.shape[weight.axis]
    return group_size if k % group_size == 0 and k > group_size else None
