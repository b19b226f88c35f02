"""Cause 2: paths that name each other, where a write would destroy an input or an earlier output.

Every path the user gives must be checked against every other before any work; a refused run,
or a failed one, leaves every file as it was (an earlier good output included).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hostile import models
from hostile.runner import Case

CAUSE = "inputs destroyed"
FAST = ["--samples", "2"]


def _model(folder: Path, name: str = "m.onnx") -> str:
    models.save(models.mlp(), folder / name)
    return name


def _external(folder: Path, name: str = "m.onnx", data: str = "m.data") -> str:
    models.save_external(models.mlp(), folder / name, data)
    return name


def _inputs(folder: Path, name: str = "in.npz") -> str:
    x = np.random.default_rng(1).standard_normal((2, 1, 32)).astype(np.float32)
    with open(folder / name, "wb") as f:  # any name: np.savez would add .npz
        np.savez(f, x=x)
    return name


def _case(name: str, setup: Callable[[Path], list[str]], expect: str = "refused") -> Case:
    return Case(CAUSE, name, setup, expect)


def _link(folder: Path, target: str, name: str, hard: bool = False) -> None:
    (os.link if hard else os.symlink)(folder / target if hard else target, folder / name)


def _collisions() -> list[Case]:
    def same(dst: str) -> Callable[[Path], list[str]]:
        def setup(folder: Path) -> list[str]:
            (folder / "sub").mkdir()
            return ["compress", _model(folder), dst.replace("ABS", str(folder)), *FAST]

        return setup

    out = [
        _case(f"dst-is-src-{i}", same(dst))
        for i, dst in enumerate(["m.onnx", "./m.onnx", "ABS/m.onnx", "sub/../m.onnx", "sub/./../m.onnx"])
    ]

    def linked(hard: bool, command: str):
        def setup(folder: Path) -> list[str]:
            src = _model(folder)
            _link(folder, src, "link.onnx", hard)
            return [command, src, "link.onnx", *FAST]

        return setup

    for command in ("compress", "decompress"):
        out += [
            _case(f"{command}-dst-symlink-to-src", linked(False, command)),
            _case(f"{command}-dst-hardlink-to-src", linked(True, command)),
            _case(f"{command}-dst-is-src", lambda f, c=command: [c, _model(f), "m.onnx"]),
            _case(f"{command}-dst-is-src-data", lambda f, c=command: [c, _external(f), "m.data"]),
            # the output's data file would be m.data: m.onnx's data (written beyond 2 GB only)
            _case(
                f"{command}-dst-data-is-src-data",
                lambda f, c=command: [c, _external(f, "m.onnx", "m.data"), "m"],
            ),
            _case(f"{command}-dst-is-src-folder", lambda f, c=command: [c, _model(f), "."]),
        ]
    return out


def _reports() -> list[Case]:
    def report(src_name: str, data: str | None, report_arg: str, dst: str = "out.onnx"):
        def setup(folder: Path) -> list[str]:
            src = _external(folder, src_name, data) if data else _model(folder, src_name)
            if report_arg == "link.json":
                _link(folder, src, "link.json")
            return ["compress", src, dst, "--report", report_arg, *FAST]

        return setup

    return [
        _case("report-is-src", report("m.json", None, "m.json")),
        _case("report-is-src-md", report("m.md", None, "./m.md")),
        _case("report-is-src-data", report("m.onnx", "w.json", "w.json")),
        _case("report-is-dst", report("m.onnx", None, "out.json", "out.json")),
        _case("report-symlink-to-src", report("m.json", None, "link.json")),
        _case("report-is-dst-other-spelling", report("m.onnx", None, "./out.md", "out.md")),
    ]


def _data_files() -> list[Case]:
    """--inputs and --calibration files that an output or the report would overwrite."""

    def setup(option: str, npz: str, dst: str, report: str | None = None):
        def make(folder: Path) -> list[str]:
            args = ["compress", _model(folder), dst, option, _inputs(folder, npz), *FAST]
            return args + (["--report", report] if report else [])

        return make

    out = []
    for option in ("--inputs", "--calibration"):
        out += [
            _case(f"dst-is{option}", setup(option, "in.npz", "in.npz")),
            _case(f"dst-is{option}-onnx-name", setup(option, "in.onnx", "in.onnx")),
            _case(f"report-is{option}", setup(option, "in.json", "out.onnx", "in.json")),
            _case(f"report-is{option}-md", setup(option, "in.md", "out.onnx", "./in.md")),
        ]
    return out


def _earlier_output() -> list[Case]:
    """A good output from an earlier run stays whole when a later run into it fails."""

    def setup(extra: list[str], bad_model: bool = False):
        def make(folder: Path) -> list[str]:
            _model(folder)
            (folder / "out.onnx").write_bytes((folder / "m.onnx").read_bytes())  # stands for it
            (folder / "report.json").write_text('{"earlier": true}\n')
            src = "m.onnx"
            if bad_model:
                (folder / "bad.onnx").write_bytes(b"\x08" * 64)
                src = "bad.onnx"
            if "in.npz" in extra:
                (folder / "in.npz").write_bytes(b"PK\x03\x04 not really")
            return ["compress", src, "out.onnx", "--report", "report.json", *FAST, *extra]

        return make

    return [
        _case("rerun-bad-model", setup([], bad_model=True)),
        _case("rerun-bad-inputs", setup(["--inputs", "in.npz"])),
        _case("rerun-bad-calibration", setup(["--calibration", "in.npz"])),
        _case("rerun-bad-option", setup(["--bits", "9"])),
        _case("rerun-missing-calibration", setup(["--calibration", "none.npz"])),
        Case(CAUSE, "rerun-good", setup([]), "ok"),
    ]


def cases() -> list[Case]:
    return _collisions() + _reports() + _data_files() + _earlier_output()
