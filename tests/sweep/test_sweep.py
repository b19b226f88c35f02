"""onnxq sweep: the grid's cells, the Pareto front and the gate's choice as properties, and whole
sweeps of a tiny model: resumable, the same in worker processes, from the command line, on Ray."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model
from hypothesis import given
from hypothesis import strategies as st

from onnxq.api import Config
from onnxq.errors import OnnxqError
from onnxq.sweep import sweep
from onnxq.sweep.cells import Cell, grid_cells, parse_axis
from onnxq.sweep.front import Gate, choose, pareto_front
from onnxq.sweep.runners import local

GRID = {"bits": [3, 5], "codebook": ["linear", "exponential"]}


def check(settings: dict) -> None:
    Config(**settings).check()


def test_axes_are_read_as_their_types():
    assert parse_axis("bits=3,4") == ("bits", [3, 4])
    assert parse_axis("target-bits=none,4.5") == ("target_bits", [None, 4.5])
    assert parse_axis("bias_correction=on,off") == ("bias_correction", [True, False])
    for bad, says in [("bits", "KEY=V1"), ("colour=red", "not a setting"), ("bits=x", "not a valid int")]:
        with pytest.raises(OnnxqError, match=says):
            parse_axis(bad)


def test_cells_drop_bits_under_a_budget_and_refuse_what_compress_refuses():
    grid = {
        "bits": [4, 5],
        "target_bits": [None, 4.5],
        "format": ["fold", "qdq"],
        "codebook": ["exponential"],
    }
    cells, refused = grid_cells(grid, check)
    settings = [c.as_dict() for c in cells]
    # bits x target_bits: two plain widths, and one budget that overrides both.
    assert {"bits": 4, "format": "fold", "codebook": "exponential"} in settings
    assert {"target_bits": 4.5, "format": "fold", "codebook": "exponential"} in settings
    assert not any("bits" in s and "target_bits" in s for s in settings)
    assert len(settings) == len({c.key for c in cells}) == 3
    # qdq stores evenly spaced levels only: compress would refuse it, and the sweep says why.
    assert refused and all("qdq" in c.options for c, _ in refused)
    assert all("linear" in why for _, why in refused)


@given(st.dictionaries(st.sampled_from(["bits", "codebook", "scale"]), st.just(None), min_size=1))
def test_every_combination_is_a_cell(keys):
    values = {"bits": [2, 3, 8], "codebook": ["linear", "kmeans"], "scale": ["lsq", "variance"]}
    grid = {k: values[k] for k in keys}
    cells, refused = grid_cells(grid, check)
    assert not refused
    assert len(cells) == int(np.prod([len(v) for v in grid.values()]))
    assert len({c.key for c in cells}) == len(cells)  # file names never collide


def test_cell_options_reproduce_it():
    cell = Cell((("bits", 4), ("codebook", "linear"), ("bias_correction", False)))
    assert cell.options == "--bits 4 --codebook linear --no-bias-correction"


rows = st.lists(
    st.fixed_dictionaries({"output_bytes": st.integers(1, 20), "cosine": st.floats(0, 1, width=32)}),
    min_size=1,
    max_size=12,
)


@given(rows)
def test_front_is_exactly_the_undominated_rows(rs):
    for i, r in enumerate(rs):
        r["key"] = str(i)

    def dominated(r):
        return any(
            o["output_bytes"] <= r["output_bytes"]
            and o["cosine"] >= r["cosine"]
            and (o["output_bytes"] < r["output_bytes"] or o["cosine"] > r["cosine"])
            for o in rs
        )

    f = pareto_front(rs, "cosine", True)
    assert {r["key"] for r in f} == {r["key"] for r in rs if not dominated(r)}
    sizes = [r["output_bytes"] for r in f]
    assert sizes == sorted(sizes)


@given(rows, st.floats(0, 1, width=32))
def test_choice_is_the_smallest_passing_row(rs, threshold):
    for i, r in enumerate(rs):
        r["key"] = str(i)
    gate = Gate.parse(f"cosine>={threshold!r}")
    chosen = choose(rs, gate)
    passing = [r for r in rs if r["cosine"] >= gate.value]
    if not passing:
        assert chosen is None
    else:
        assert chosen["output_bytes"] == min(r["output_bytes"] for r in passing)
        assert chosen["cosine"] >= gate.value


def test_gates_parse_or_say_how():
    assert Gate.parse("agreement >= 0.97") == Gate("agreement", ">=", 0.97)
    assert Gate.parse("metric<=3").higher_is_better is False
    assert Gate.parse("rel_l2<0.1").higher_is_better is False
    for bad in ("cosine", "cosine=>1", "speed>=1", "cosine>=nan"):
        with pytest.raises(OnnxqError, match="--gate"):
            Gate.parse(bad)


@pytest.fixture
def tiny_files(tmp_path) -> tuple[Path, Path]:
    model, feeds = tiny_model()
    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.SerializeToString())
    rng = np.random.default_rng(1)
    inputs = tmp_path / "real.npz"
    np.savez(inputs, x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32), ids=np.tile(feeds["ids"], 4))
    return path, inputs


def measured(rows: list[dict]) -> list[dict]:
    """The rows without their timings, which differ from run to run, and with their measures to 9
    digits: onnxruntime's sums differ in the last bits with its thread count (Ray's workers run one)."""

    def kept(v):
        return float(f"{v:.9g}") if isinstance(v, float) else v

    return [{k: kept(v) for k, v in r.items() if k not in ("seconds", "fingerprint")} for r in rows]


def test_sweep_resumes(tiny_files, tmp_path):
    model, inputs = tiny_files
    first = sweep(model, tmp_path / "a", GRID, "cosine>=0.9", inputs=str(inputs))
    assert len(first.rows) == 4 and first.reused == 0 and not any(r.get("error") for r in first.rows)
    assert first.chosen is not None and first.chosen["cosine"] >= 0.9
    assert all((tmp_path / "a" / "models" / f"{r['key']}.onnx").exists() for r in first.rows)
    table = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert table["chosen"] == first.chosen["key"] and len(table["rows"]) == 4
    assert (tmp_path / "a" / "sweep.md").read_text().count("| `--bits") == 4
    again = sweep(model, tmp_path / "a", GRID, "cosine>=0.9", inputs=str(inputs))
    assert again.reused == 4 and again.rows == first.rows
    # A deleted output, or a changed model, invalidates a saved row.
    (tmp_path / "a" / "models" / f"{first.rows[0]['key']}.onnx").unlink()
    assert sweep(model, tmp_path / "a", GRID, inputs=str(inputs)).reused == 3
    model.write_bytes(model.read_bytes())
    assert sweep(model, tmp_path / "a", {"bits": [3]}, inputs=str(inputs)).reused == 0


@pytest.mark.heavy  # worker processes take seconds to start
def test_worker_processes_give_the_same_rows(tiny_files, tmp_path):
    model, inputs = tiny_files
    here = sweep(model, tmp_path / "a", GRID, "cosine>=0.9", inputs=str(inputs))
    parallel = sweep(model, tmp_path / "b", GRID, "cosine>=0.9", runner=local(2), inputs=str(inputs))
    assert parallel.reused == 0 and measured(parallel.rows) == measured(here.rows)


def test_sweep_refuses_bad_data_before_any_work(tiny_files, tmp_path):
    model, _ = tiny_files
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=np.zeros((2, 3), np.float32))
    with pytest.raises(OnnxqError, match=r"bad.npz lacks inputs \[.x., .ids.\]"):
        sweep(model, tmp_path / "s", GRID, inputs=str(bad))
    with pytest.raises(OnnxqError, match="--inputs"):
        sweep(model, tmp_path / "s", GRID)
    assert not (tmp_path / "s" / "cells").exists()


def test_metric_command_is_a_metric(tiny_files, tmp_path):
    """A user's own evaluation: here the output's size in bytes, so lower is better."""
    model, _ = tiny_files
    command = f"{sys.executable} -c \"import os, sys; print('size', os.path.getsize(sys.argv[1]))\" {{model}}"
    result = sweep(model, tmp_path / "m", {"bits": [2, 6]}, "metric<=100000000", metric_command=command)
    sizes = {r["settings"]["bits"]: r["metric"] for r in result.rows}
    assert sizes[2] < sizes[6]
    assert all("cosine" not in r for r in result.rows)  # no random-input closeness in the table
    assert result.chosen["settings"] == {"bits": 2}


def test_cli_prints_the_front_and_the_choice(tiny_files, tmp_path):
    from typer.testing import CliRunner

    from onnxq.cli import app

    model, inputs = tiny_files
    args = ["sweep", str(model), "--inputs", str(inputs), "--grid", "bits=3,5", "--out", str(tmp_path / "c")]
    done = CliRunner().invoke(app, [*args, "--gate", "cosine>=0.9", "--parallel", "1"])
    assert done.exit_code == 0, done.output
    assert "Pareto front: size against cosine" in done.stdout
    assert "chosen for cosine>=0.9: --bits " in done.stdout
    lines = done.stdout.splitlines()
    assert lines[-1] == f"wrote sweep.json, sweep.md, sweep.svg and the models (models/) in {tmp_path / 'c'}"
    assert max(map(len, lines[:-1])) <= 100  # the last line holds a path to copy, unbroken
    never = CliRunner().invoke(app, [*args, "--gate", "cosine>=1.5"])
    assert never.exit_code == 3 and never.stderr.strip().splitlines()[-1].startswith(
        "error: no setting meets"
    )
    assert "cells: 2, 2 kept from an earlier run" in never.stdout  # the first run's cells
    usage = CliRunner().invoke(app, [*args, "--gate", "speed>=1"])
    assert usage.exit_code == 2 and "--gate" in usage.stderr and "Traceback" not in usage.output


@pytest.mark.heavy
def test_ray_gives_the_same_table(tiny_files, tmp_path):
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
    from onnxq.sweep.runners import on_ray

    model, inputs = tiny_files
    here = sweep(model, tmp_path / "here", GRID, "cosine>=0.9", inputs=str(inputs))
    there = sweep(model, tmp_path / "ray", GRID, "cosine>=0.9", runner=on_ray("local", 2), inputs=str(inputs))
    assert not ray.is_initialized()  # the sweep started the local cluster, and stopped it
    assert measured(there.rows) == measured(here.rows)
    assert there.chosen["key"] == here.chosen["key"]


def test_a_grid_nothing_can_run_and_cells_that_all_fail_are_errors(tiny_files, tmp_path):
    model, inputs = tiny_files
    with pytest.raises(OnnxqError, match="no setting of the grid can run: --bits 9: --bits must be"):
        sweep(model, tmp_path / "n", {"bits": [9]}, inputs=str(inputs))
    assert not (tmp_path / "n").exists()  # refused before anything was written
    failing = sweep(
        model, tmp_path / "f", {"bits": [4]}, metric_command=f"{sys.executable} -c 'raise SystemExit(2)'"
    )
    assert not failing and failing.measured == 0 and "exited with 2" in failing.rows[0]["error"]
