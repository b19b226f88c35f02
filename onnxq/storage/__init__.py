"""The storage-format registry: a new format is one file plus one line here.

A format module has NAME, SUMMARY, decoders(q, opset) -> [FunctionProto] (the called one first) and
encode(q, name, output, shape) -> (initializers, call node).
"""

from __future__ import annotations

from types import ModuleType

from onnxq.storage import fold, matmulnbits

FORMATS: dict[str, ModuleType] = {
    "fold": fold,
    "matmulnbits": matmulnbits,
}

# What each initializer suffix holds, for the report's byte breakdown.
INDICES_SUFFIX = ".onnxq.indices"
CODEBOOK_SUFFIXES = (".onnxq.codebook", ".onnxq.scale")
CODEBOOK_ATTRIBUTES = ("ranges", "offset")  # tensor attributes of a decoder call that hold levels

__all__ = ["CODEBOOK_ATTRIBUTES", "CODEBOOK_SUFFIXES", "FORMATS", "INDICES_SUFFIX"]
