"""Cause 1: modules planted in the folder where onnxq runs, which must never be imported.

Each planted module writes a CANARY-<name> file when imported (runner.py flags it), in the
parent and in every worker process, whichever command runs.
"""

from __future__ import annotations

from pathlib import Path

from hostile import models
from hostile.runner import CANARY, Case

CAUSE = "folder code"

# Standard library modules that onnxq, multiprocessing's spawn or the libraries import; and the
# libraries themselves, as packages. A trailing "/" plants a package.
MODULES = [
    "pickle",
    "socket",
    "selectors",
    "multiprocessing/",
    "concurrent/",
    "numpy/",
    "onnx/",
    "onnxq/",
    "onnxruntime",
    "typing_extensions",
    "rich/",
    "typer/",
    "click/",
    "google/",
    "secrets",
    "tempfile",
    "queue",
    "struct",
    "logging/",
    "json/",
    "zipfile",
    "sitecustomize",
    "usercustomize",
    "runpy",
    "ml_dtypes",
]

COMMANDS = {
    # worker processes: the continuous search with two jobs
    "processes": ["compress", "m.onnx", "out.onnx", "--jobs", "2", "--search", "exact", "--samples", "2"],
    "default": ["compress", "m.onnx", "out.onnx", "--samples", "2"],
    "validate": ["validate", "m.onnx", "m.onnx", "--samples", "2"],
}


def plant(folder: Path, module: str) -> None:
    """A module (or package) named module in folder that leaves a canary when imported."""
    name = module.rstrip("/")
    canary = folder / f"{CANARY}{name}"
    code = f"open({str(canary)!r}, 'w').write('imported from the working folder')\n"
    if module.endswith("/"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(code)
    else:
        (folder / f"{name}.py").write_text(code)


def _setup(module: str, args: list[str], model_bytes: bool = True):
    def setup(folder: Path) -> list[str]:
        if model_bytes:
            models.save(models.mlp(), folder / "m.onnx")
        else:
            (folder / "m.onnx").write_bytes(b"\x08\x07garbage" * 10)
        plant(folder, module)
        return args

    return setup


def cases() -> list[Case]:
    # Every module under worker processes (where the folder once came first on the path), a
    # few under the other commands.
    out = [
        Case(CAUSE, f"{module.rstrip('/')}-{command}", _setup(module, args))
        for command, count in (("processes", len(MODULES)), ("default", 8), ("validate", 6))
        for module in MODULES[:count]
        for args in [COMMANDS[command]]
    ]
    every = "multiprocessing/"
    out += [
        Case(CAUSE, "bad-input", _setup(every, ["compress", "m.onnx", "out.onnx"], False), "refused"),
        Case(CAUSE, "help", _setup(every, ["compress", "--help"]), "ok"),
        Case(CAUSE, "version", _setup(every, ["--version"]), "ok"),
        Case(CAUSE, "decompress", _decompress_setup),
    ]
    return out


def _decompress_setup(folder: Path) -> list[str]:
    """decompress of a float model (nothing to decode) with every module planted at once."""
    models.save(models.mlp(), folder / "m.onnx")
    for module in MODULES:
        plant(folder, module)
    return ["decompress", "m.onnx", "float.onnx", "--samples", "2"]
