"""The storage-format registry: a new format is one file plus one line here.

A format module has NAME, SUMMARY, decoders(q, opset) -> [FunctionProto] (what a width's
decoder costs), and either encode(q, name, output, shape, axis) -> (initializers, node) per
weight, or encode_batch([(q, output, shape)], opset, name) -> (initializers, call, functions)
with batch_key(q), function_name(codebook, bits) and BATCH_WEIGHTS, for one call per batch
(fold). Optionally replace_consumer(q, weight, node, block, opset, packed_rows) -> (initializers,
node, functions) | why not | None replaces the weight's readers instead (matmulnbits, fold's
packed embedding rows), with REPLACES_READERS saying whether that is the format's rule (a weight
stored whole is then a fallback the report notes) or an exception (fold). And what the
pipeline asks it: CHANNEL_FIRST (encode gets the channel-first shape, and rewrite transposes
back; else the weight's own shape and channel axis), supports(codebook, bits) -> why not |
None, min_opset(bits, granularity, group_size), weight_problem(shape, axis, group_size) ->
why not | None, notes(widths) -> report notes, index_bytes(q) and codebook_bytes(q).
"""

from __future__ import annotations

from types import ModuleType

from onnxq.storage import fold, matmulnbits, qdq

FORMATS: dict[str, ModuleType] = {
    "fold": fold,
    "qdq": qdq,
    "matmulnbits": matmulnbits,
}

# What each initializer suffix holds, for the report's byte breakdown.
INDICES_SUFFIX = ".onnxq.indices"
CODEBOOK_SUFFIXES = (".onnxq.codebook", ".onnxq.scale", ".onnxq.ranges", ".onnxq.offsets")
CODEBOOK_ATTRIBUTES = ("ranges", "offset")  # tensor attributes of a decoder call that hold levels

__all__ = ["CODEBOOK_ATTRIBUTES", "CODEBOOK_SUFFIXES", "FORMATS", "INDICES_SUFFIX"]
