"""How fast bad input fails: seconds from `onnxq compress` to its one-line error.

    python tools/bench_errors.py [--model models/efficientnet_lite0.onnx] [--repeat 3]

Cases: an --inputs file whose arrays do not fit the model (the wrong shape, a name the model
does not take), a --calibration file with NaN, and a model on which nothing runs (its input
needs a size that no search finds). Each must exit 1 with one `error:` line and write nothing,
before any weight is quantized: the target is under 5 s on EfficientNet-Lite0.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def unrunnable(folder: Path) -> Path:
    """A real-sized model (a 1024 x 1024 MatMul) whose input runs only at length 3 * 337."""
    w = np.random.default_rng(0).standard_normal((1011, 1024)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["y"]),
        ],
        "unrunnable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024])],
        [numpy_helper.from_array(np.array([1, 1011], np.int64), "shape"), numpy_helper.from_array(w, "w")],
    )
    path = folder / "unrunnable.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def cases(model: Path, folder: Path) -> dict[str, list[str]]:
    shape = [d.dim_value or 1 for d in onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim]
    name = onnx.load(str(model)).graph.input[0].name
    np.savez(folder / "shape.npz", **{name: np.zeros([8, shape[1], shape[2] + 1, shape[3]], np.float32)})
    np.savez(folder / "name.npz", image=np.zeros([8, *shape[1:]], np.float32))
    np.savez(folder / "nan.npz", **{name: np.full([8, *shape[1:]], np.nan, np.float32)})
    out = str(folder / "out.onnx")
    return {
        "--inputs with the wrong shape": ["compress", str(model), out, "--inputs", str(folder / "shape.npz")],
        "--inputs with a name the model does not take": ["compress", str(model), out, "--inputs", str(folder / "name.npz")],
        "--calibration with NaN": ["compress", str(model), out, "--target-bits", "5", "--calibration", str(folder / "nan.npz")],
        "a model on which nothing runs": ["compress", str(unrunnable(folder)), out],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "efficientnet_lite0.onnx")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="onnxq_errors_") as tmp:
        for label, command in cases(args.model, Path(tmp)).items():
            times, done = [], None
            (Path(tmp) / "out.onnx").unlink(missing_ok=True)
            for _ in range(args.repeat):
                start = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "onnxq", *command], capture_output=True, text=True, check=False
                )
                times.append(time.perf_counter() - start)
            assert done is not None
            lines = done.stderr.strip().splitlines()
            ok = done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")
            ok &= not (Path(tmp) / "out.onnx").exists()
            failures += not ok
            print(
                f"{label}: exit {done.returncode}, median {statistics.median(times):.2f} s, {'ok' if ok else 'WRONG'}"
            )
            print(f"    {lines[0] if lines else '(no stderr)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
