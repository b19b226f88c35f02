"""Quantize many (weight, choice) jobs at once: in worker processes, or in threads.

The x0 searches run many small numpy calls that hold the GIL, so threads share about
one core between them; worker processes use every core. Spawned workers import the
caller's main module, so only a caller that guards it (the CLI) asks for them. Jobs
run largest first, so that no large tensor starts last while the other workers idle.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from onnxq.errors import OnnxqError, WeightError
from onnxq.graph import rewrite
from onnxq.graph.select import Weight
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.quantize import QuantizedTensor, quantize
from onnxq.refine import steps as refine
from onnxq.refine.widths import Choice

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Settings:
    """What quantize needs besides the weight: picklable, so that it reaches worker processes."""

    codebook: str
    granularity: str
    scale: str
    search: str
    group_size: int | None
    jobs: int


def weight_rows(weight: Weight, settings: Settings, per_tensor: bool = False) -> np.ndarray:
    """The weight's rows as the quantizer groups them; NaN or Inf is an error naming it."""
    if not np.all(np.isfinite(weight.array)):
        raise WeightError(
            f"weight {weight.name!r} contains NaN or Inf; fix the model, or leave the tensor "
            f"in float with --exclude '^{re.escape(weight.name)}$'"
        )
    granularity = "tensor" if per_tensor else settings.granularity
    return rewrite.group_rows(weight, granularity, None if per_tensor else settings.group_size)


def quantize_rows(rows: np.ndarray, settings: Settings, bits: int, error=None) -> QuantizedTensor:
    """quantize as the settings say; without error (weight-space error) everything is picklable,
    and it runs in a worker process."""
    return quantize(rows, CODEBOOKS[settings.codebook], bits, settings.scale, error, settings.search)


def quantize_weight(weight: Weight, choice: Choice, settings: Settings, layers=None) -> QuantizedTensor:
    """One weight as a choice says. layers: per weight name, its layers' input statistics (a choosing codebook then
    ranks its candidate codebooks by output error)."""
    error = refine.output_error(weight, (layers or {}).get(weight.name, []))  # None: |dW|^2
    return quantize_rows(weight_rows(weight, settings, choice.per_tensor), settings, choice.bits, error)


def run(
    jobs: list[tuple[Weight, Choice]],
    settings: Settings,
    layers: dict,
    progress: Progress | None,
    stage: str,
) -> list[QuantizedTensor]:
    """Every job quantized, in the jobs' order."""
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][0].array.size)
    out: list[QuantizedTensor | None] = [None] * len(jobs)
    if progress:
        progress(0, len(jobs), stage)
    # Ranking a choosing codebook's candidates by output error needs the layers' statistics: that stays here.
    ranked = bool(layers) and bool(CODEBOOKS[settings.codebook].candidates())
    processes = settings.jobs > 1 and len(jobs) > 1 and not ranked
    with _safe_path(), _pool(processes, min(settings.jobs, len(jobs))) as pool:
        if processes:
            rows = [weight_rows(jobs[i][0], settings, jobs[i][1].per_tensor) for i in order]
            results = pool.map(quantize_rows, rows, [settings] * len(order), [jobs[i][1].bits for i in order])
        else:
            results = pool.map(lambda i: quantize_weight(jobs[i][0], jobs[i][1], settings, layers), order)
        try:
            for done, (i, q) in enumerate(zip(order, results)):
                out[i] = q
                if progress:
                    progress(done + 1, len(jobs), f"{stage} {jobs[i][0].name}")
        except BrokenProcessPool:
            raise OnnxqError(
                "a quantizing worker process died (out of memory, or it could not import the "
                "caller's main module); retry with --jobs 1"
            ) from None
    return out  # type: ignore[return-value]


def _pool(processes: bool, workers: int) -> Executor:
    if processes:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))


@contextmanager
def _safe_path() -> Iterator[None]:
    """PYTHONSAFEPATH=1 while the pool and its workers start: a spawned worker (and multiprocessing's
    resource tracker) runs `python -c ...`, which would put the current folder first on sys.path,
    so that a multiprocessing/, pickle.py or socket.py in the folder where onnxq runs would be
    imported, and run, in place of the standard library's."""
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = before
