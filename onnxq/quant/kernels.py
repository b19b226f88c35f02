"""Which engine runs the passes over every weight: numba's compiled loops (compiled.py) when the
`fast` extra is installed, numpy otherwise. Both give the same codes, byte for byte.

Small arrays stay on numpy, so that a small model pays neither numba's import nor its compiling
(about 0.5 s and, before its cache is written, a few seconds per process). ONNXQ_KERNELS=numpy
turns the compiled loops off.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType

MIN_WEIGHTS = 1 << 16  # arrays smaller than this stay on numpy
_forced: list[str] = []  # use()'s engine, innermost last


@cache
def _compiled() -> ModuleType | None:
    if os.environ.get("ONNXQ_KERNELS", "").lower() == "numpy":
        return None
    try:
        from onnxq.quant import compiled
    except ImportError:  # numba is not installed
        return None
    return compiled


def engine(size: int) -> ModuleType | None:
    """The compiled loops for an array of `size` elements, or None for numpy."""
    if _forced:
        return _compiled() if _forced[-1] == "numba" else None
    return _compiled() if size >= MIN_WEIGHTS else None


@contextmanager
def use(name: str) -> Iterator[None]:
    """Run every array, whatever its size, on one engine: 'numba' (an error without numba) or
    'numpy'. For side-by-side measurements and tests."""
    if name not in ("numba", "numpy"):
        raise ValueError(f"unknown engine {name!r}: numba or numpy")
    if name == "numba" and _compiled() is None:
        raise RuntimeError("numba is not installed, or ONNXQ_KERNELS=numpy turned it off")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def name() -> str:
    """'numba' or 'numpy': what runs the passes over large tensors."""
    return "numba" if _compiled() is not None else "numpy"
