"""MatMulNBits against onnxruntime's own quantizer at equal size, on real transformers.

    python tools/bench_matmulnbits.py [--models minilm_l3] [--write]

For each zoo model (tools/zoo.toml; its evaluation and calibration npz from tools/zoo.py):
onnxruntime's MatMulNBitsQuantizer (RTN, 4 bits, block 128, symmetric and asymmetric) and
onnxq's `--bits 4 --codebook linear --format matmulnbits`, without data and with the
calibration npz, side by side. Each row: the MatMul weights' bits per weight as stored
(indices, scales, zero points), the file's size, and the output cosine against the float
model on the evaluation inputs (the least over the model's outputs, as tools/zoo_sweep.py).
--write puts the table into docs/RESULTS.md, section "matmulnbits".

Needs onnx_ir, which onnxruntime's quantizer imports (pip install onnx_ir).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import paper_tables
import zoo

import onnxq


def ort_rtn(src: Path, dst: Path, symmetric: bool) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=128, is_symmetric=symmetric)
    q.process()
    onnx.save(q.model.model, str(dst))


def onnxq_cli(src: Path, dst: Path, extra: list[str]) -> None:
    cmd = ["onnxq", "compress", str(src), str(dst), "--bits", "4", "--codebook", "linear"]
    cmd += ["--format", "matmulnbits", "--no-validate", *extra]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1]}")


def not_matmul(src: Path) -> list[str]:
    """--exclude for every initializer that is not a MatMul's second input: ORT quantizes only those."""
    import re

    model = onnx.load(str(src), load_external_data=False)
    second = {n.input[1] for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    others = [t.name for t in model.graph.initializer if t.name not in second]
    return ["--exclude", "^(" + "|".join(re.escape(n) for n in others) + ")$"] if others else []


def matmul_bits(path: Path) -> float:
    """Bits per weight of the MatMulNBits nodes: packed indices, scales and zero points."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    stored = weights = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a.i for a in node.attribute}
        weights += attrs["K"] * attrs["N"]
        for name in node.input[1:4]:
            if name in inits:
                stored += numpy_helper.to_array(inits[name]).nbytes
    return 8 * stored / max(weights, 1)


def measure(name: str, folder: Path) -> list[dict]:
    src = zoo.fetch(name)
    calib, evaluation = zoo.inputs(name)
    only = not_matmul(src)
    configs = {
        "ORT RTN block 128, asymmetric": lambda dst: ort_rtn(src, dst, False),
        "ORT RTN block 128, symmetric": lambda dst: ort_rtn(src, dst, True),
        "onnxq matmulnbits, MatMul weights only": lambda dst: onnxq_cli(src, dst, only),
        "onnxq matmulnbits --calibration, MatMul weights only": lambda dst: onnxq_cli(
            src, dst, [*only, "--calibration", str(calib)]
        ),
        "onnxq matmulnbits (every weight)": lambda dst: onnxq_cli(src, dst, []),
    }
    rows = []
    for label, make in configs.items():
        dst = folder / f"{name}.{len(rows)}.onnx"
        make(dst)
        v = onnxq.compare_models(src, dst, inputs=evaluation, min_cosine=-1)
        cosine = zoo.least_cosine(name, {o.name: o.cosine for o in v.outputs})
        rows.append(
            {
                "model": name,
                "method": label,
                "bpw": matmul_bits(dst),
                "bytes": dst.stat().st_size,
                "cosine": cosine,
            }
        )
        print(
            f"{name:12} {label:54} {rows[-1]['bpw']:.3f} bpw  {dst.stat().st_size:>10} B  cosine {cosine:.4f}"
        )
    return rows


READING = (
    "Reading it. MatMulNBits stores a float32 scale per block of 128 whatever the quantizer does, and "
    "onnxq's default now gives each block its own (it repeated its channel's before 0552403: 0.9786 "
    "here). Without data that is 0.0004 below symmetric RTN at the same size: onnxq's linear codebook "
    "is symmetric with 2^b - 1 levels (-7..7 steps at 4 bits), while RTN's symmetric range uses all "
    "16 (-8..7, the -8 on each block's largest magnitude). The asymmetric RTN output pays a zero point "
    "per block (4.288 bits per weight). With calibration data (GPTQ) onnxq is above both."
)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | method | MatMul bits per weight | file bytes | cosine |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['model']} | {r['method']} | {r['bpw']:.3f} | {r['bytes']:,} | {r['cosine']:.4f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["minilm_l3"])
    parser.add_argument("--write", action="store_true", help="write the section to docs/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for name in args.models for r in measure(name, Path(tmp))]
    text = table(rows)
    print(text)
    if args.write:
        commit = paper_tables.onnxq_commit()
        command = "python tools/bench_matmulnbits.py --models " + " ".join(args.models) + " --write"
        body = (
            f"## MatMulNBits against onnxruntime's quantizer at onnxq {commit}\n\n"
            "4 bits, no data unless --calibration; cosine of the outputs on the zoo's evaluation inputs "
            "(tools/zoo_inputs.py), the least over the outputs. onnxq stores no zero point; ORT's "
            "asymmetric output adds a 4-bit zero point per block of 128. ORT quantizes "
            "the MatMul weights only; so do the rows marked so (every other initializer --exclude'd), and "
            "the last row compresses every weight (the embedding tables too, as GatherBlockQuantized), "
            "which is what the file size column shows.\n\n"
            f"Command: `{command}`\n\n{text}\n\n{READING}\n"
        )
        paper_tables.write_section(paper_tables.ROOT / "docs" / "RESULTS.md", "matmulnbits", body)


if __name__ == "__main__":
    main()
