"""Time onnxq.calibrate.collect_layer_stats on one model.

    python tools/bench_calibrate.py models/efficientnet_lite0.onnx [--data calib.npz] [--samples 100]

Without --data the inputs are onnxq's seeded synthetic samples (onnxq.synthetic).
Wall time counts the collection only, not loading the model or the data. On a machine
that other jobs keep busy, OPENBLAS_NUM_THREADS=1 can be faster: OpenBLAS's threads
wait for each other on every small product.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnx

from onnxq import runtime
from onnxq.check.validate import synthetic_plan
from onnxq.data import samples as data
from onnxq.graph.select import find_weights
from onnxq.refine.calibrate import collect_layer_stats, layer_specs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, help="an npz from tools/make_calibration.py")
    parser.add_argument("--samples", type=int, default=100, help="synthetic samples without --data")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)

    model = onnx.load(args.model)
    specs, skips = layer_specs(model, find_weights(model, 0)[0])
    inputs = data.input_specs(model)
    if args.data:
        samples = data.read_samples(args.data, inputs, "calibration file")
    else:
        plan = synthetic_plan(model, runtime.session(model.SerializeToString()), inputs, {}, 0)
        samples = plan.feeds(args.samples, 0)
    wall, cpu = time.perf_counter(), time.process_time()
    stats = collect_layer_stats(model, specs, samples, inputs, args.batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"{args.model.name}: {len(stats)} layers ({len(skips)} uses skipped), {len(samples)} samples, "
        f"batch {args.batch}: {wall:.2f} s wall, {cpu:.2f} s CPU"
    )


if __name__ == "__main__":
    main()
