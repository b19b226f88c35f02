"""--format matmulnbits: MatMul weights as MatMulNBits, tables as GatherBlockQuantized, the rest as fold."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import op_counts, run, tiny_model
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.check.decompress import decompress_model
from onnxq.errors import OnnxqError


def stack(seed: int = 0, width: int = 96, depth: int = 3) -> tuple[onnx.ModelProto, dict]:
    """An embedding table and a stack of MatMul + Add + Relu blocks, as in a small transformer."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((500, width)) * 0.5).astype(np.float32), "emb")]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["h0"])]
    for i in range(depth):
        inits += [
            numpy_helper.from_array(
                (rng.standard_normal((width, 2 * width)) * 0.1).astype(np.float32), f"up{i}"
            ),
            numpy_helper.from_array(
                (rng.standard_normal((2 * width, width)) * 0.1).astype(np.float32), f"down{i}"
            ),
            numpy_helper.from_array(rng.standard_normal(2 * width).astype(np.float32) * 0.1, f"bias{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [f"h{i}", f"up{i}"], [f"u{i}"], name=f"mm_up{i}"),
            helper.make_node("Add", [f"u{i}", f"bias{i}"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
            helper.make_node("MatMul", [f"r{i}", f"down{i}"], [f"h{i + 1}"], name=f"mm_down{i}"),
        ]
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 7])],
        [helper.make_tensor_value_info(f"h{depth}", TensorProto.FLOAT, [2, 7, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, {"ids": rng.integers(0, 500, (2, 7))}


def relative_error(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group_size", [None, 32])
def test_matmuls_become_matmulnbits_and_match_fold(bits, group_size):
    model, feeds = stack()
    # grid: the exact search over 8-bit blocks of 32 took 25 s, and the formats are what is compared
    config = {"bits": bits, "codebook": "linear", "group_size": group_size, "search": "grid"}
    nbits, report = onnxq.compress_model(model, onnxq.Config(format="matmulnbits", **config))
    fold, _ = onnxq.compress_model(model, onnxq.Config(format="fold", **config))
    counts = op_counts(nbits)
    assert counts["MatMulNBits"] == 6 and counts["MatMul"] == 0
    assert counts["GatherBlockQuantized"] == 1 and counts["Gather"] == 0
    assert any(i.domain == "com.microsoft" for i in nbits.opset_import)
    assert not any("stored as fold" in n for n in report.notes)
    if group_size:  # the same blocks: the same weights
        assert relative_error(run(nbits, feeds)[0], run(fold, feeds)[0]) < 1e-3
    else:  # MatMulNBits' own blocks (of 32 and 64 here), fold's channels
        expected = run(model, feeds)[0]
        assert relative_error(run(nbits, feeds)[0], expected) < relative_error(run(fold, feeds)[0], expected)
    (blob,) = [t for t in nbits.graph.initializer if t.name == "up0.onnxq.indices"]
    assert blob.data_type == TensorProto.UINT8 and len(blob.raw_data) == 2 * 96 * 96 * bits // 8


def test_without_group_size_each_matmul_block_gets_its_own_scale_and_the_rest_keep_channels():
    """MatMulNBits stores a float32 scale per block either way: by default each block's is its
    own (as --group-size 128 gives), not its channel's repeated; the embedding table, which
    GatherBlockQuantized stores, keeps one per row, as the file costs the same."""
    model, feeds = stack(width=256)
    config = {"bits": 4, "codebook": "linear", "search": "grid"}
    out, default = onnxq.compress_model(model, onnxq.Config(format="matmulnbits", **config))
    _, blocks = onnxq.compress_model(model, onnxq.Config(format="matmulnbits", group_size=128, **config))
    grouped = {w.name: w.groups for w in blocks.weights}
    assert all(w.groups == grouped[w.name] for w in default.weights if w.name != "emb")
    for w in default.weights:
        k = w.elements // w.groups
        assert k == (500 * 256 // 500 if w.name == "emb" else 128), (w.name, k)
    scales = {
        t.name: numpy_helper.to_array(t) for t in out.graph.initializer if t.name.endswith(".onnxq.scale")
    }
    up = scales["up0.onnxq.scale"].reshape(512, 2)  # (n, k / 128)
    assert not np.allclose(up[:, 0], up[:, 1])  # each block's own
    fold, _ = onnxq.compress_model(model, onnxq.Config(format="fold", **config))
    per_channel = relative_error(run(fold, feeds)[0], run(model, feeds)[0])
    assert relative_error(run(out, feeds)[0], run(model, feeds)[0]) < per_channel


def test_a_codebook_or_width_no_matmul_can_take_is_an_error_naming_what_can():
    model, _ = stack()
    with pytest.raises(OnnxqError, match="linear levels.*use --format fold for --codebook exponential"):
        onnxq.compress_model(model, onnxq.Config(format="matmulnbits", bits=4, codebook="exponential"))
    with pytest.raises(OnnxqError, match="2, 4, 8 bits, not 5"):
        onnxq.compress_model(model, onnxq.Config(format="matmulnbits", bits=5, codebook="linear"))
    with pytest.raises(OnnxqError, match="2, 4, 8 bits, not 3"):  # the default codebook is linear
        onnxq.compress_model(model, onnxq.Config(format="matmulnbits", bits=3))


def test_with_target_bits_the_widths_without_kernels_fall_back_to_fold(tmp_path):
    model, feeds = stack(width=256)
    calib = tmp_path / "ids.npz"
    np.savez(calib, ids=np.random.default_rng(0).integers(0, 500, (8, 2, 7)))
    out, report = onnxq.compress_model(
        model, onnxq.Config(format="matmulnbits", target_bits=4.0, codebook="linear", min_elements=1)
    )
    widths = {w.name: w.bits for w in report.weights if w.name != "emb"}
    nbits = sum(1 for b in widths.values() if b in (2, 4, 8))
    assert op_counts(out)["MatMulNBits"] == nbits
    assert op_counts(out)["MatMul"] == len(widths) - nbits
    onnx.checker.check_model(out, full_check=True)
    run(out, feeds)


def test_conv_and_other_ops_fall_back_to_fold():
    model, _ = tiny_model()
    out, report = onnxq.compress_model(model, onnxq.Config(format="matmulnbits", bits=4, codebook="linear"))
    assert op_counts(out)["MatMulNBits"] == 1  # mm.b; Conv, ConvTranspose, Gemm and Gather stay fold
    assert any("stored as fold" in n for n in report.notes)
    fold, _ = onnxq.compress_model(model, onnxq.Config(bits=4, codebook="linear"))
    ours, theirs = (
        {t.name: numpy_helper.to_array(t) for t in decompress_model(m)[0].graph.initializer}
        for m in (out, fold)
    )
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, w in theirs.items():  # the weights stored as fold are fold's
        if name != "mm.b":
            np.testing.assert_allclose(ours[name], w, rtol=1e-6, atol=1e-7, err_msg=name)
    # mm.b's blocks of 16 inputs (400 per channel) each have their own scale: closer than a channel's
    assert relative_error(ours["mm.b"], original["mm.b"]) < relative_error(theirs["mm.b"], original["mm.b"])


def test_decompress_turns_matmulnbits_back_into_matmul():
    model, feeds = stack()
    nbits, _ = onnxq.compress_model(model, onnxq.Config(format="matmulnbits", bits=4, codebook="linear"))
    floats, count = decompress_model(nbits)
    assert count == 7
    assert op_counts(floats)["MatMul"] == 6 and op_counts(floats)["MatMulNBits"] == 0
    assert op_counts(floats)["Gather"] == 1 and op_counts(floats)["GatherBlockQuantized"] == 0
    assert all(i.domain != "com.microsoft" for i in floats.opset_import)
    np.testing.assert_allclose(run(floats, feeds)[0], run(nbits, feeds)[0], rtol=1e-4, atol=1e-5)
