"""onnxq sweep: compress one model over a grid of settings, measure every output on the user's
inputs (or with their own metric command), and find the smallest output that meets a gate.

cells (cells.py) -> runners (runners.py: local processes or Ray; rows saved as they finish,
so a re-run skips them) -> front (front.py: the Pareto front and the choice) -> the table and
the plot in the sweep's folder (table.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnxq.api import Config
from onnxq.data import samples as data
from onnxq.errors import OnnxqError
from onnxq.graph import io
from onnxq.sweep import table
from onnxq.sweep.cells import DEFAULT_GRID, Cell, grid_cells
from onnxq.sweep.front import Gate, choose, pareto_front
from onnxq.sweep.runners import Job, Runner, Store, fingerprint, local

SENSITIVITY_SAMPLES = 16  # pinned, so that --target-bits cells are the same on any machine


@dataclass
class Sweep:
    """Truthy when a row meets the gate, or when there is no gate."""

    rows: list[dict]  # every cell, in grid order
    refused: list[tuple[str, str]]  # (options, why compress would refuse them)
    metric: str  # the accuracy axis of the front
    gate: Gate | None
    folder: Path
    reused: int = 0  # rows measured by an earlier run and kept
    written: list[Path] = field(default_factory=list)

    @property
    def front(self) -> list[dict]:
        higher = self.gate.higher_is_better if self.gate else True
        return pareto_front(self.rows, self.metric, higher)

    @property
    def chosen(self) -> dict | None:
        return choose(self.rows, self.gate) if self.gate else None

    @property
    def measured(self) -> int:
        return sum(1 for r in self.rows if not r.get("error"))

    def __bool__(self) -> bool:
        """A gate met, or, without a gate, some cell measured."""
        return self.chosen is not None if self.gate else self.measured > 0


def sweep(
    model: str | Path,
    folder: str | Path,
    grid: dict[str, list] | None = None,
    gate: str | None = None,
    metric_command: str | None = None,
    runner: Runner | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **base,
) -> Sweep:
    """Every cell of the grid compressed into folder/models and measured. base: Config fields
    every cell shares (inputs, calibration, dims, ...). A row saved by an earlier run with the
    same model, data and settings is reused."""
    model, folder = Path(model), Path(folder)
    parsed = Gate.parse(gate) if gate else None
    todo_cells, refused = grid_cells(grid or DEFAULT_GRID, lambda s: Config(**base, **s).check())
    if not todo_cells:
        cell, why = refused[0]
        raise OnnxqError(f"no setting of the grid can run: {cell.options}: {why}")
    _check(model, folder, base, metric_command, parsed)
    if any("target_bits" in c.as_dict() for c in todo_cells):
        base.setdefault("sensitivity_samples", SENSITIVITY_SAMPLES)
    # Without real inputs the user's metric command is the measure: random inputs would only
    # fill the table with closeness that means nothing.
    base.setdefault("validate", base.get("inputs") is not None)
    files = [Path(base[k]) for k in ("inputs", "calibration") if base.get(k)]
    stamp = fingerprint(model, files, base)
    all_jobs = [Job(str(model), str(folder), c, base, metric_command, stamp) for c in todo_cells]
    store = Store(folder)
    rows: dict[str, dict | None] = {job.cell.key: store.saved(job) for job in all_jobs}
    todo = [job for job in all_jobs if rows[job.cell.key] is None]
    reused = len(all_jobs) - len(todo)
    if progress:
        progress(reused, len(all_jobs), "compressing and measuring")
    for k, row in enumerate((runner or local(1))(todo), start=reused + 1):
        store.save(row)
        rows[row["key"]] = row
        if progress:
            progress(k, len(all_jobs), f"compressing and measuring: {row['options']}")
    metric = parsed.metric if parsed else ("metric" if metric_command else "cosine")
    result = Sweep(
        [saved for j in all_jobs if (saved := rows[j.cell.key]) is not None],
        [(c.options, why) for c, why in refused],
        metric,
        parsed,
        folder,
        reused,
    )
    result.written = table.write(result)
    return result


def _check(model: Path, folder: Path, base: dict, metric_command: str | None, gate: Gate | None) -> None:
    """Fail before any work: on the data files, on a gate that nothing measures."""
    if not model.is_file():
        raise OnnxqError(f"{model} does not exist or is not a file; give the float model's path")
    if base.get("inputs") is None and metric_command is None:
        raise OnnxqError(
            "a sweep needs real inputs to measure on: pass --inputs FILE.npz, or --metric-command"
        )
    if gate and gate.metric == "metric" and metric_command is None:
        raise OnnxqError("--gate on 'metric' needs --metric-command, which prints it")
    if gate and gate.metric != "metric" and base.get("inputs") is None:
        raise OnnxqError(f"--gate on {gate.metric} needs --inputs: it is measured against the float model")
    specs = data.input_specs(io.read_model(model, lazy=True)[0])
    for key in ("inputs", "calibration"):
        if base.get(key) is not None:
            data.read_samples(base[key], specs, f"{key} file")
    if folder.exists() and not folder.is_dir():
        raise OnnxqError(f"{folder} is a file; give a folder for the sweep's models and table")
    (folder / "models").mkdir(parents=True, exist_ok=True)


__all__ = ["Cell", "Gate", "Sweep", "sweep"]
