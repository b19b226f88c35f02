"""Which engine runs the passes over every weight: numba's compiled loops (compiled.py) when the
`fast` extra is installed, numpy otherwise. Both give the same codes, byte for byte.

A process that loads numba pays its import and the load of the compiled loops from their cache
(0.2-0.3 s, and a few seconds of compiling before the cache is written), which only a few
million weights win back: compress picks the engine per run (for_weights), and a direct call of
quantize() takes numpy for arrays under MIN_WEIGHTS. ONNXQ_KERNELS=numpy turns the compiled
loops off.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType

MIN_WEIGHTS = 1 << 16  # in "auto", arrays smaller than this stay on numpy
RUN_WEIGHTS = 1 << 24  # compress runs with fewer weights to quantize than this take numpy
_mode = "auto"  # or "numba" or "numpy": set by use() and configure()


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
    if _mode == "numpy":
        return None
    if _mode == "numba":
        return _compiled()
    return _compiled() if size >= MIN_WEIGHTS else None


def for_weights(count: int) -> str:
    """The engine for a run that quantizes count weights: numba from RUN_WEIGHTS on, if installed."""
    return "numba" if count >= RUN_WEIGHTS and _compiled() is not None else "numpy"


def configure(name: str) -> None:
    """Run every array of this process on one engine from now on: 'auto', 'numba' or 'numpy'
    (worker processes and threads each set the run's)."""
    global _mode
    if name not in ("auto", "numba", "numpy"):
        raise ValueError(f"unknown engine {name!r}: auto, numba or numpy")
    if name == "numba" and _compiled() is None:
        raise RuntimeError("numba is not installed, or ONNXQ_KERNELS=numpy turned it off")
    _mode = name


@contextmanager
def use(name: str) -> Iterator[None]:
    """configure(name) for the duration of a block: side-by-side measurements and tests."""
    before = _mode
    configure(name)
    try:
        yield
    finally:
        configure(before)


def current() -> str:
    """The engine this process runs: 'auto', 'numba' or 'numpy'."""
    return _mode


def name() -> str:
    """'numba' or 'numpy': what runs the passes over large tensors when numba may."""
    return "numba" if _compiled() is not None else "numpy"
