"""Where the sweep's cells run: one compression and its measurement per cell, in local worker
processes or as Ray tasks, each cell's row saved as it finishes so that a re-run skips it."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from onnxq import __version__, jobs
from onnxq.api import Config, compress
from onnxq.check.report import Report
from onnxq.errors import OnnxqError, first_line
from onnxq.graph import io
from onnxq.sweep.cells import Cell

METRIC_SECONDS = 3600  # a --metric-command that runs longer is stopped, and its cell fails


@dataclass(frozen=True)
class Job:
    """Everything a cell needs, picklable: it may run in another process or on another machine."""

    model: str
    folder: str
    cell: Cell
    base: dict = field(default_factory=dict)  # Config fields every cell shares (inputs, dims, ...)
    metric_command: str | None = None
    fingerprint: dict = field(default_factory=dict)  # what makes a saved row still valid

    @property
    def output(self) -> Path:
        return Path(self.folder) / "models" / f"{self.cell.key}.onnx"


def run_cell(job: Job) -> dict:
    """Compress with the cell's settings and measure the output: a row of the sweep's table."""
    row: dict = {"key": job.cell.key, "options": job.cell.options, "settings": job.cell.as_dict()}
    row["fingerprint"] = job.fingerprint
    t = time.perf_counter()
    try:
        config = Config(**{**job.base, **job.cell.as_dict(), "jobs": 1})
        report = compress(job.model, job.output, config)
        row.update(measures(report))
        if job.metric_command:
            row["metric"] = user_metric(job.metric_command, job.output)
    except OnnxqError as exc:
        row["error"] = str(exc)
    row["seconds"] = round(time.perf_counter() - t, 2)
    return row


def failed(job: Job, why: str) -> dict:
    """The row of a cell that could not run."""
    return {"key": job.cell.key, "options": job.cell.options, "settings": job.cell.as_dict(), "error": why}


def measures(report: Report) -> dict:
    """Size, and the worst output's closeness to the float model on the sweep's inputs."""
    row = {
        "output_bytes": report.output.total,
        "ratio": _finite(report.ratio),
        "bits_per_weight": _finite(report.bits_per_weight),
    }
    v = report.validation
    if v is None:
        return row
    outs = v.outputs
    agreement = [o.top1_agreement for o in outs if o.top1_agreement is not None]
    row.update(
        cosine=_finite(min(o.cosine for o in outs)),
        sqnr=_finite(min(o.sqnr_db for o in outs)),
        agreement=min(agreement) if agreement else None,
        rel_l2=_finite(max(o.relative_l2_error for o in outs)),
        max_abs=_finite(max(o.max_abs_error for o in outs)),
    )
    return row


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def user_metric(command: str, model: Path) -> float:
    """The last number that command printed, with {model} replaced by the output's path."""
    try:
        args = [a.replace("{model}", str(model)) for a in shlex.split(command)]
        done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=METRIC_SECONDS)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise OnnxqError(f"--metric-command could not run: {first_line(exc)}") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise OnnxqError(f"--metric-command exited with {done.returncode}: {tail}")
    numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", done.stdout)
    if not numbers:
        raise OnnxqError("--metric-command printed no number; print the metric as the last number")
    return float(numbers[-1])


def fingerprint(model: Path, files: list[Path], base: dict) -> dict:
    """What a saved row was measured on: the model's and data files' sizes and times, the shared
    settings, and the onnxq version. A row whose fingerprint differs is measured again."""

    def stamp(p: Path) -> list:
        s = p.stat()
        return [str(p), s.st_size, s.st_mtime_ns]

    return json.loads(
        json.dumps(
            {"model": stamp(model), "files": [stamp(f) for f in files], "base": base, "onnxq": __version__}
        )
    )


class Store:
    """Each finished cell's row as folder/cells/KEY.json, written atomically; a row is reused when
    it was measured on the same model, data and settings, and its output is still there."""

    def __init__(self, folder: Path) -> None:
        self.cells = folder / "cells"

    def saved(self, job: Job) -> dict | None:
        path = self.cells / f"{job.cell.key}.json"
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        # A failed cell runs again: its cause (a full disk, a broken metric command) may be gone.
        ok = isinstance(row, dict) and row.get("fingerprint") == job.fingerprint and not row.get("error")
        return row if ok and job.output.exists() else None

    def save(self, row: dict) -> None:
        self.cells.mkdir(parents=True, exist_ok=True)
        io.write_text(self.cells / f"{row['key']}.json", json.dumps(row, indent=1))


Runner = Callable[[list[Job]], Iterator[dict]]


def local(parallel: int) -> Runner:
    """Cells in `parallel` worker processes (one at a time in this process when parallel is 1)."""

    def run(todo: list[Job]) -> Iterator[dict]:
        if parallel <= 1 or len(todo) <= 1:
            yield from map(run_cell, todo)
            return
        with jobs.worker_processes(min(parallel, len(todo))) as pool:
            futures = [pool.submit(run_cell, job) for job in todo]
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BrokenProcessPool:
                raise OnnxqError(
                    "a sweep worker process died (out of memory?); the finished cells are kept: run "
                    "again with a smaller --parallel"
                ) from None

    return run


def on_ray(address: str, cpus: int | None) -> Runner:
    """Cells as Ray tasks: address "local" starts a cluster on this machine (with cpus CPUs), any
    other is passed to ray.init ("auto", or ray://HOST:10001). The model, the data files and the
    sweep's folder must be at the same paths on every node (a shared file system)."""
    try:
        import ray
    except ImportError:
        raise OnnxqError("--ray needs Ray: pip install 'onnxq[ray]'") from None

    def run(todo: list[Job]) -> Iterator[dict]:
        started = not ray.is_initialized()
        if started:
            kwargs = {"num_cpus": cpus} if address == "local" else {"address": address}
            try:
                ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise OnnxqError(
                    f"--ray {address}: Ray could not start or connect: {first_line(exc)}"
                ) from None
        try:
            task = ray.remote(num_cpus=1)(run_cell)
            jobs_of = {task.remote(job): job for job in todo}
            pending = list(jobs_of)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    yield ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # the task's worker died, or Ray gave up on it
                    yield failed(jobs_of[ready[0]], f"its Ray task failed: {first_line(exc)}")
        finally:
            if started:
                ray.shutdown()

    return run


def default_parallel() -> int:
    return max(1, min(4, os.cpu_count() or 1))
