"""Embedding tables: fold keeps a large table's rows packed, matmulnbits uses GatherBlockQuantized.

Both must look up exactly what the table stored whole (fold, folded at session
creation) holds, for any shape of ids, negative ids included.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import op_counts, run
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.check.decompress import decompress_model
from onnxq.storage import fold

VOCAB, DIM = 300, 40


@pytest.fixture(autouse=True)
def small_tables(monkeypatch):
    """Tables of a few thousand elements count as large here, so tests stay fast."""
    monkeypatch.setattr(fold, "ROWS_MIN_ELEMENTS", 1000)


def embedding(ids_shape, vocab: int = VOCAB, dim: int = DIM, also_matmul: bool = False, axis: int = 0):
    """Gather(table, ids) -> MatMul with a small head; optionally the table also feeds a MatMul (tied)."""
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((vocab, dim)) * rng.uniform(0.1, 2.0, (vocab, 1))).astype(np.float32)
    head = (rng.standard_normal((dim, 8)) * 0.2).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], axis=axis),
        helper.make_node("MatMul", ["e", "head"], ["y"])
        if axis == 0
        else helper.make_node("Identity", ["e"], ["y"]),
    ]
    y_shape = [*ids_shape, 8] if axis == 0 else [vocab, *ids_shape]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, list(ids_shape))]
    if also_matmul:
        nodes.append(helper.make_node("MatMul", ["x", "table"], ["tied"]))
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, vocab]))
        outputs.append(helper.make_tensor_value_info("tied", TensorProto.FLOAT, [2, dim]))
    graph = helper.make_graph(
        nodes,
        "embedding",
        inputs,
        outputs,
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(head, "head")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(ids_shape, vocab: int = VOCAB, extra=None):
    rng = np.random.default_rng(1)
    ids = rng.integers(-vocab, vocab, size=ids_shape).astype(np.int64)  # negative ids count from the end
    return {"ids": ids, **(extra or {})}


def lookups(model, ids) -> np.ndarray:
    """What the model's Gather returns for ids."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in [*out.graph.input, *out.graph.output]:  # any shape of ids
        value.type.tensor_type.ClearField("shape")
    out.graph.output.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, None))
    return run(out, {"ids": ids}, ["e"])[0]


@pytest.mark.parametrize("codebook", ["exponential", "linear", "kmeans"])
@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_packed_rows_look_up_exactly_what_the_folded_table_holds(codebook, bits):
    model = embedding([2, 5])
    packed, report = onnxq.compress_model(model, onnxq.Config(bits=bits, codebook=codebook, validate=False))
    whole, _ = onnxq.compress_model(
        model, onnxq.Config(bits=bits, codebook=codebook, validate=False, packed_rows=False)
    )
    assert (
        op_counts(packed)[fold.rows_function_name(codebook, bits)] == 1 and op_counts(packed)["Gather"] == 0
    )
    assert not any(n.op_type.startswith(fold.ROWS_PREFIX) for n in whole.graph.node)
    assert any("rows packed" in n for n in report.notes)
    onnx.checker.check_model(packed, full_check=True)
    for shape in [(2, 5), (7,), (), (3, 1, 4)]:
        ids = feeds(shape)["ids"]
        np.testing.assert_array_equal(lookups(packed, ids), lookups(whole, ids))
    ids = np.arange(-VOCAB, VOCAB, dtype=np.int64)  # every row, from both ends
    np.testing.assert_array_equal(lookups(packed, ids), lookups(whole, ids))


def test_packed_rows_work_with_group_size():
    model = embedding([4])
    config = {"bits": 4, "group_size": 8, "validate": False}
    packed, _ = onnxq.compress_model(model, onnxq.Config(**config))
    whole, _ = onnxq.compress_model(model, onnxq.Config(packed_rows=False, **config))
    ids = np.arange(VOCAB, dtype=np.int64)
    assert op_counts(packed)[fold.rows_function_name("exponential", 4)] == 1
    np.testing.assert_array_equal(lookups(packed, ids), lookups(whole, ids))


def test_packed_rows_store_each_row_in_exactly_its_bits():
    model = embedding([3])
    packed, _ = onnxq.compress_model(model, onnxq.Config(bits=5, validate=False))
    (blob,) = [t for t in packed.graph.initializer if t.name == "table.onnxq.indices"]
    assert list(blob.dims) == [VOCAB, 5 * -(-DIM // 8)]


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"vocab": 20, "dim": 40}, "a small table folds whole"),
        ({"also_matmul": True}, "a table a MatMul also reads is needed whole"),
        ({"axis": 1}, "a Gather along columns is not a row lookup"),
    ],
)
def test_other_tables_are_folded_whole(kwargs, why):
    model = embedding([3], **kwargs)
    packed, _ = onnxq.compress_model(model, onnxq.Config(bits=5, validate=False, min_elements=16))
    assert not any(n.op_type.startswith(fold.ROWS_PREFIX) for n in packed.graph.node), why
    assert any(n.op_type == "Gather" for n in packed.graph.node), why


def test_a_table_gathered_twice_keeps_its_rows_packed_once():
    model = embedding([3])
    model.graph.node.append(helper.make_node("Gather", ["table", "ids"], ["e2"]))
    model.graph.output.extend(
        [helper.make_tensor_value_info(e, TensorProto.FLOAT, [3, DIM]) for e in ("e", "e2")]
    )
    packed, _ = onnxq.compress_model(model, onnxq.Config(bits=5, validate=False))
    assert op_counts(packed)[fold.rows_function_name("exponential", 5)] == 2
    assert sum(t.name == "table.onnxq.indices" for t in packed.graph.initializer) == 1
    ids = feeds([3])["ids"]
    a, b = run(packed, {"ids": ids}, ["e", "e2"])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt, bits, codebook", [("fold", 5, "exponential"), ("matmulnbits", 4, "linear")])
def test_decompress_turns_the_lookup_back_into_a_gather_of_the_decoded_table(fmt, bits, codebook):
    model = embedding([2, 5])
    compressed, _ = onnxq.compress_model(model, onnxq.Config(format=fmt, bits=bits, codebook=codebook))
    floats, count = decompress_model(compressed)
    assert count == 2  # the table and the head
    assert op_counts(floats)["Gather"] == 1 and not floats.functions
    ids = np.arange(-VOCAB, VOCAB, dtype=np.int64)
    np.testing.assert_array_equal(lookups(floats, ids), lookups(compressed, ids))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group_size", [None, 32])
def test_gather_block_quantized_matches_fold(bits, group_size):
    vocab = 96  # 8 bits take the exact x0 search: fewer rows than VOCAB keep the suite in its bound
    model = embedding([2, 5], vocab=vocab, dim=64)
    config = {"bits": bits, "codebook": "linear", "group_size": group_size, "validate": False}
    nbits, _ = onnxq.compress_model(model, onnxq.Config(format="matmulnbits", **config))
    folded, _ = onnxq.compress_model(model, onnxq.Config(format="fold", packed_rows=False, **config))
    assert op_counts(nbits)["GatherBlockQuantized"] == 1
    (node,) = [n for n in nbits.graph.node if n.op_type == "GatherBlockQuantized"]
    assert node.domain == "com.microsoft"
    ids = np.arange(-vocab, vocab, dtype=np.int64)
    got, want = lookups(nbits, ids), lookups(folded, ids)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6


def test_a_table_gather_block_quantized_cannot_take_keeps_packed_rows_and_says_so():
    model = embedding([2, 5], dim=42)  # 42 values are not whole bytes at 2 bits
    nbits, report = onnxq.compress_model(
        model, onnxq.Config(format="matmulnbits", bits=2, codebook="linear", validate=False)
    )
    assert any("rows packed" in n for n in report.notes)
    assert op_counts(nbits)["GatherBlockQuantized"] == 0
    assert op_counts(nbits)[fold.rows_function_name("linear", 2)] == 1
    whole, _ = onnxq.compress_model(model, onnxq.Config(bits=2, codebook="linear", packed_rows=False))
    ids = np.arange(VOCAB, dtype=np.int64)
    np.testing.assert_array_equal(lookups(nbits, ids), lookups(whole, ids))


def test_packed_rows_in_an_old_ir_version_are_inlined():
    model = embedding([2, 5])
    model.ir_version = 7
    packed, report = onnxq.compress_model(model, onnxq.Config(bits=5, validate=False))
    whole, _ = onnxq.compress_model(model, onnxq.Config(bits=5, validate=False, packed_rows=False))
    assert packed.ir_version == 7 and not packed.functions
    assert any("inlined" in n for n in report.notes)
    assert any(n.op_type == "Gather" and n.input[0] == "table.onnxq.indices" for n in packed.graph.node)
    ids = np.arange(-VOCAB, VOCAB, dtype=np.int64)
    np.testing.assert_array_equal(lookups(packed, ids), lookups(whole, ids))
