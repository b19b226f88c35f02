"""onnx-graphsurgeon against plain onnx for the steps onnxq's graph stage takes: memory and time.

    python tools/bench_graphsurgeon.py [--models A.onnx B.onnx] [--llama 30m] [--out RESULT.json]

Each step runs in a fresh child process, so that its peak RSS (ru_maxrss of the child) is its
own. Steps, on each model:
- onnx: onnx.load (external data included), then SerializeToString: what onnxq does today;
- graphsurgeon: the same load, gs.import_onnx, gs.export_onnx, SerializeToString: the round
  trip any edit through graphsurgeon costs;
- onnxq constfold: onnxq's fold_constants on the loaded model;
- graphsurgeon fold: gs's fold_constants (onnxruntime-backed) and cleanup on the imported graph.
--llama builds a synthetic decoder with ../shared/scale/make_llama.py (external data) first.
Seconds are wall time on a shared 2-core machine: read ratios, not absolute values.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

STEPS = {
    "onnx": """
import onnx
m = onnx.load(PATH)
n = len(m.SerializeToString())
""",
    "graphsurgeon": """
import onnx, onnx_graphsurgeon as gs
m = onnx.load(PATH)
g = gs.import_onnx(m)
del m
n = len(gs.export_onnx(g).SerializeToString())
""",
    "onnxq constfold": """
import onnx
from onnxq.graph import constfold
m = onnx.load(PATH)
constfold.fold_constants(m)
n = len(m.SerializeToString())
""",
    "graphsurgeon fold": """
import onnx, onnx_graphsurgeon as gs
m = onnx.load(PATH)
g = gs.import_onnx(m)
del m
g.fold_constants().cleanup()
n = len(gs.export_onnx(g).SerializeToString())
""",
}


def run_step(step: str, path: Path) -> dict:
    code = f"import time\nPATH = {str(path)!r}\nt = time.perf_counter()\n{STEPS[step]}\nprint(time.perf_counter() - t, n)"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode:
        return {"step": step, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
    seconds, size = done.stdout.split()
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: run the steps smallest first
    return {"step": step, "seconds": float(seconds), "bytes": int(size), "peak_mb": max(peak, before) / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="*", type=Path, default=[SHARED / "models" / "efficientnet_lite0.onnx"]
    )
    parser.add_argument("--llama", help="also a make_llama.py preset, e.g. 30m or 125m")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxq_gs_") as tmp:
        models = list(args.models)
        if args.llama:
            path = Path(tmp) / f"llama_{args.llama}.onnx"
            make = SHARED / "scale" / "make_llama.py"
            subprocess.run([sys.executable, str(make), str(path), "--preset", args.llama], check=True)
            models.append(path)
        for model in models:
            for step in STEPS:
                # a fresh interpreter per step, and ru_maxrss per child: run each step in its own
                # grandchild so that an earlier, larger step does not mask a later one
                row = json.loads(
                    subprocess.run(
                        [sys.executable, __file__, "--one", step, str(model)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                )
                rows.append({"model": model.name, **row})
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(run_step(sys.argv[2], Path(sys.argv[3]))))
    else:
        main()
