"""Cause 6: hostile option values and npz files (--inputs, --calibration): usage errors (exit 2)
or one error line, never a traceback; npz files are read without pickles and refused by their
declared sizes before anything is inflated.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import TensorProto

from hostile import models
from hostile.runner import Case

CAUSE = "options and npz"
FAST = ["--samples", "2"]

OPTIONS = {
    "bits-0": ["--bits", "0"],
    "bits-9": ["--bits", "9"],
    "bits-neg": ["--bits", "-1"],
    "bits-word": ["--bits", "five"],
    "bits-float": ["--bits", "1.5"],
    "bits-huge": ["--bits", str(2**70)],
    "target-nan": ["--target-bits", "nan"],
    "target-inf": ["--target-bits", "inf"],
    "target-neg-inf": ["--target-bits", "-inf"],
    "target-0": ["--target-bits", "0"],
    "target-1e308": ["--target-bits", "1e308"],
    "target-empty": ["--target-bits", ""],
    "seed-neg": ["--seed", "-1"],
    "seed-2-64": ["--seed", str(2**64)],
    "seed-neg-huge": ["--seed", str(-(2**63))],
    "dim-1e9": ["--dim", "x[0]=1000000000"],
    "dim-name-1e9": ["--dim", "N=1000000000"],
    "dim-zero": ["--dim", "N=0"],
    "dim-neg": ["--dim", "N=-1"],
    "dim-no-eq": ["--dim", "N"],
    "dim-no-name": ["--dim", "=3"],
    "dim-axis-99": ["--dim", "x[99]=3"],
    "dim-max": ["--dim", "x[0]=16777216"],
    "samples-0": ["--samples", "0"],
    "samples-neg": ["--samples", "-5"],
    "samples-huge": ["--samples", str(10**12)],
    "batch-0": ["--batch", "0"],
    "batch-huge": ["--batch", str(10**12)],
    "group-1": ["--group-size", "1"],
    "group-3": ["--group-size", "3"],
    "group-huge": ["--group-size", str(10**12)],
    "group-tensor": ["--group-size", "8", "--granularity", "tensor"],
    "min-elements-0": ["--min-elements", "0"],
    "min-elements-huge": ["--min-elements", str(10**18)],
    "exclude-paren": ["--exclude", "("],
    "exclude-all": ["--exclude", ".*"],
    "exclude-redos": ["--exclude", "(a*)*b"],
    "exclude-empty": ["--exclude", ""],
    "calibration-samples-0": ["--calibration-samples", "0"],
    "calibration-samples-huge": ["--calibration-samples", str(10**9), "--rounding", "gptq"],
    "target-bits-samples-huge": ["--target-bits", "4", "--calibration-samples", str(10**9)],
    "sensitivity-huge": ["--target-bits", "4", "--sensitivity-samples", str(10**9)],
    "jobs-0": ["--jobs", "0"],
    "jobs-huge": ["--jobs", str(10**6)],
    "jobs-huge-exact": ["--jobs", "1000", "--search", "exact"],
    "min-cosine-nan": ["--min-cosine", "nan"],
    "min-sqnr-nan": ["--min-sqnr", "nan"],
    "min-sqnr-inf": ["--min-sqnr", "inf"],
    "min-agreement-nan": ["--min-agreement", "nan"],
    "codebook-bad": ["--codebook", "nope"],
    "format-bad": ["--format", "zip"],
    "granularity-bad": ["--granularity", "row"],
    "rounding-bad": ["--rounding", "up"],
    "search-bad": ["--search", "slow"],
    "unknown-option": ["--no-such-option"],
    "extra-argument": ["extra.onnx"],
    "format-qdq-bits-1": ["--format", "qdq", "--bits", "1"],
    "matmulnbits-kmeans": ["--format", "matmulnbits", "--codebook", "kmeans"],
    "max-input-bytes-0": ["--max-input-bytes", "0"],
    "max-input-bytes-neg": ["--max-input-bytes", "-1"],
    "max-input-bytes-word": ["--max-input-bytes", "lots"],
}


def _options(name: str, extra: list[str]) -> Case:
    def setup(folder: Path) -> list[str]:
        models.save(models.mlp(), folder / "m.onnx")
        return ["compress", "m.onnx", "out.onnx", *FAST, *extra]

    return Case(CAUSE, f"option-{name}", setup)


def _x(rows: int = 2, dtype=np.float32, fill: float | None = None) -> np.ndarray:
    x = np.random.default_rng(2).standard_normal((rows, 32)).astype(np.float64)
    return (x if fill is None else np.full_like(x, fill)).astype(dtype)


def _npz(arrays: dict[str, np.ndarray]) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _pickled(path: Path) -> None:
    models.bytes_npz(path, {"x.npy": models.npy_header((2, 32), "|O") + pickle.dumps([1, 2])})


def _npy_version(version: int) -> Callable[[Path], None]:
    data = models.npy_header((2, 32), version=min(version, 2)) + _x().tobytes()
    data = data[:6] + bytes([version]) + data[7:]
    return lambda path: models.bytes_npz(path, {"x.npy": data})


def _lying_header(shape: tuple[int, ...]) -> Callable[[Path], None]:
    return lambda path: models.bytes_npz(path, {"x.npy": models.npy_header(shape) + _x().tobytes()}, True)


def _many(count: int) -> Callable[[Path], None]:
    return _npz({"x": _x(), **{f"x/{i}": _x(1) for i in range(count)}})


def _folder(count: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.mkdir()
        for i in range(count):
            np.savez(path / f"{i:04d}.npz", x=_x(1))

    return make


NPZ = {
    "empty-zip": lambda p: models.bytes_npz(p, {}),
    "zero-bytes": _raw(b""),
    "not-zip": _raw(b"not a zip" * 9),
    "npy-not-npz": _raw(models.npy_header((2, 32)) + _x().tobytes()),
    "pickled": _pickled,
    "wrong-key": _npz({"nope": _x()}),
    "extra-key": _npz({"x": _x(), "z": _x()}),
    "wrong-shape": _npz({"x": _x()[:, :7]}),
    "wrong-rank": _npz({"x": _x()[None]}),
    "complex": _npz({"x": _x().astype(np.complex64)}),
    "strings": _npz({"x": np.array(["a"] * 32)}),
    "bool": _npz({"x": _x() > 0}),
    "nan": _npz({"x": _x(fill=np.nan)}),
    "inf": _npz({"x": _x(fill=np.inf)}),
    "3e38": _npz({"x": _x(fill=3e38)}),
    "1e39": _npz({"x": _x(dtype=np.float64, fill=1e39)}),
    "zero-samples": _npz({"x": _x(0)}),
    "run-gap": _npz({"x/0": _x(1), "x/2": _x(1)}),
    "many-members": _many(300),
    "traversal-name": lambda p: models.bytes_npz(p, {"../x.npy": b"\x93NUMPY"}),
    "truncated": lambda p: (np.savez(p, x=_x()), p.write_bytes(p.read_bytes()[:200])),
    "npy-version-3": _npy_version(3),
    "npy-version-9": _npy_version(9),
    "header-too-long": lambda p: models.bytes_npz(
        p, {"x.npy": b"\x93NUMPY\x02\x00" + (10**6).to_bytes(4, "little") + b"{" * 10**6}
    ),
    "declares-8-GiB": _lying_header((2**31, 1)),
    "declares-huge-rank": _lying_header((2**20,) * 4),
    "declares-negative": _lying_header((-2, 32)),
    "bomb-5-GiB": lambda p: models.deflate_bomb(p, "x", (5 * 2**28, 1), 64 << 20),
    "bomb-declared-small": lambda p: models.deflate_bomb(p, "x", (2, 32), 64 << 20),
    "bomb-4.5-GiB-real": lambda p: models.deflate_bomb(p, "x", (9 * 2**27, 1), 9 << 29),
    "folder-empty": lambda p: p.mkdir(),
    "folder-200": _folder(200),
}


def _npz_case(name: str, make: Callable[[Path], None], option: str, model=models.mlp) -> Case:
    def setup(folder: Path) -> list[str]:
        models.save(model(), folder / "m.onnx")
        make(folder / "data.npz")
        return ["compress", "m.onnx", "out.onnx", *FAST, option, "data.npz"]

    return Case(CAUSE, f"{option.strip('-')}-{name}", setup)


def _bool_model():
    return models.typed_input(TensorProto.BOOL)


def cases() -> list[Case]:
    out = [_options(k, v) for k, v in OPTIONS.items()]
    for option in ("--inputs", "--calibration"):
        out += [
            _npz_case(k, v, option)
            for k, v in NPZ.items()
            if option == "--inputs" or "bomb" in k or k in CALIBRATION
        ]
    out += [
        _npz_case("bool-model-bool", _npz({"x": _x() > 0}), "--inputs", _bool_model),
        _npz_case("bool-model-float", _npz({"x": _x()}), "--inputs", _bool_model),
        Case(
            CAUSE,
            "bool-model-random",
            lambda f: ["compress", str(models.save(_bool_model(), f / "m.onnx").name), "out.onnx", *FAST],
            "ok",
        ),
        Case(
            CAUSE,
            "int64-model-random",
            lambda f: [
                "compress",
                models.save(models.typed_input(TensorProto.INT64), f / "m.onnx").name,
                "out.onnx",
                *FAST,
            ],
            "ok",
        ),
    ]
    out += [_validate_case(k, NPZ[k]) for k in VALIDATE]
    return out


VALIDATE = ["pickled", "wrong-shape", "nan", "3e38", "declares-8-GiB", "bomb-5-GiB", "npy-version-9"]


def _validate_case(name: str, make: Callable[[Path], None]) -> Case:
    def setup(folder: Path) -> list[str]:
        models.save(models.mlp(), folder / "m.onnx")
        make(folder / "data.npz")
        return ["validate", "m.onnx", "m.onnx", "--inputs", "data.npz"]

    return Case(CAUSE, f"validate-{name}", setup)


CALIBRATION = {
    "empty-zip",
    "pickled",
    "wrong-key",
    "nan",
    "3e38",
    "zero-samples",
    "declares-8-GiB",
    "folder-empty",
}
