"""Errors that onnxq raises on bad input; each message says how to fix it."""

from __future__ import annotations

import re


class OnnxqError(Exception):
    """A problem with the user's input or options. The CLI prints it and exits 1."""


class ModelLoadError(OnnxqError):
    """The input model cannot be read."""


class WeightError(OnnxqError):
    """A weight cannot be quantized (NaN or Inf values)."""


_NOISE = [
    (re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : "), ""),
    (
        re.compile(
            r"Non-zero status code returned while running (\S+) node\. Name:'([^']*)' Status Message: "
        ),
        r"\1 node '\2': ",
    ),
    (re.compile(r"/onnxruntime_src/\S+:\d+ (\S+\(.*?\) )?"), ""),  # the source file and function
    (re.compile(r"[\w:]+\(const [^)]*\) "), ""),
]


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, or its type when it has none, without
    onnxruntime's status prefix and source locations."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    for pattern, replacement in _NOISE:
        text = pattern.sub(replacement, text)
    return text[:limit]
