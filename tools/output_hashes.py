"""sha256 of onnxq's outputs on the shared models: a change that only moves code changes none.

    python tools/output_hashes.py [--models DIR] [--modes bits5 tb5] [--out hashes.json]

Each model is compressed in each mode (validation off) and the output file hashed. Run it
before and after a restructuring and compare the two JSON files (--compare OLD.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import onnxq

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "bits5": {"bits": 5},
    "tb5": {"target_bits": 5.0, "sensitivity_samples": 16},
    "bits4-linear": {"bits": 4, "codebook": "linear"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--modes", nargs="+", default=["bits5", "tb5"], choices=list(MODES))
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--compare", type=Path, help="a JSON file of an earlier run: exit 1 on any difference"
    )
    args = parser.parse_args(argv)
    hashes = {}
    with tempfile.TemporaryDirectory(prefix="onnxq_hashes_") as tmp:
        for model in sorted(args.models.glob("*.onnx")):
            for mode in args.modes:
                dst = Path(tmp) / f"{model.stem}.{mode}.onnx"
                onnxq.compress(model, dst, validate=False, jobs=2, **MODES[mode])
                hashes[f"{model.name} {mode}"] = hashlib.sha256(dst.read_bytes()).hexdigest()
                print(f"{model.name:32} {mode:14} {hashes[f'{model.name} {mode}']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(hashes, indent=1) + "\n")
    if args.compare:
        old = json.loads(args.compare.read_text())
        differ = sorted(k for k in hashes if old.get(k) != hashes[k])
        print(f"{len(hashes) - len(differ)} of {len(hashes)} outputs identical to {args.compare}")
        for key in differ:
            print(f"differs: {key}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
