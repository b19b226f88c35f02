"""What the pipeline asks of a storage format, as typing Protocols, and the names formats share.

A format is a module that satisfies StorageFormat: the rewrite, decompress, the width
allocation and the report use it through these members alone and never name a format.
A format that fuses weights into their readers (replace_consumer) may store the weights
it cannot fuse with another format (WHOLE); a format that stores every weight whole
sets WHOLE to None and is itself a WholeWeights.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import onnx

from onnxq.quant.quantize import QuantizedTensor

if TYPE_CHECKING:
    from onnxq.graph.select import Weight

DOMAIN = "onnxq"  # the domain of the decoder functions onnxq adds to a model
ROWS_PREFIX = "GatherRows_"  # the decoder functions that unpack only the gathered rows of a table
MARK = ".onnxq."  # in the name of every tensor onnxq adds
# The output's metadata_props that say what wrote it: the onnxq version and its settings (JSON).
VERSION_KEY = "onnxq.version"
CONFIG_KEY = "onnxq.config"
# The stored tensors as JSON rows of Stored, for outputs whose decoders were inlined (IR < 8),
# where the graph no longer shows which call rebuilt which weight.
TENSORS_KEY = "onnxq.tensors"


class Piece(NamedTuple):
    """One weight to store whole: its codes, its name, the tensor the decoder makes, and that
    tensor's shape and output-channel axis (channel-first when the format says CHANNEL_FIRST)."""

    q: QuantizedTensor
    name: str
    output: str
    shape: tuple[int, ...]
    axis: int


class Stored(NamedTuple):
    """One weight as an output file stores it, read back from the graph (onnxq inspect)."""

    name: str
    shape: tuple[int, ...]
    format: str
    codebook: str
    bits: int
    groups: int  # how many sets of levels (channels, blocks, or one for the tensor)
    index_bytes: int
    codebook_bytes: int


# read(tensor): a tensor's values, mapped from its external file if it is still there (external.reader)
Read = Callable[[onnx.TensorProto], np.ndarray]

# (initializers, nodes, local functions they call)
Encoded = tuple[list[onnx.TensorProto], list[onnx.NodeProto], list[onnx.FunctionProto]]
# (initializers, the node that replaces a reader, local functions it calls)
Replacement = tuple[list[onnx.TensorProto], onnx.NodeProto, list[onnx.FunctionProto]]


class WholeWeights(Protocol):
    """Stores a weight whole: nodes that rebuild the float tensor, which the readers then read."""

    NAME: str
    CHANNEL_FIRST: bool  # the decoder builds the weight channel-first; the rewrite transposes it back
    BATCH_WEIGHTS: int  # at most this many weights per batch (unless one weight alone is larger)

    def batch_key(self, q: QuantizedTensor) -> Hashable | None:
        """Weights with the same key in a graph share one decoder call; None: a call per weight."""
        ...

    def call_name(self, q: QuantizedTensor) -> str:
        """The name of the call that decodes a batch with q's key (the rewrite makes it unique)."""
        ...

    def encode(self, pieces: list[Piece], opset: int, name: str) -> Encoded:
        """The initializers and nodes that build every piece's output, and the functions they call."""
        ...


class StorageFormat(Protocol):
    """A way to store quantized weights in an ONNX graph."""

    NAME: str
    REPLACES_READERS: bool  # replacing the readers is the rule (a weight stored whole is a noted fallback)
    WHOLE: WholeWeights | None  # the format that stores whole weights for this one; None: itself
    DOMAINS: tuple[str, ...]  # the operator domains its nodes use

    def supports(self, codebook: str, bits: int) -> str | None:
        """Why weights quantized with this codebook and width cannot be stored, or None."""
        ...

    def min_opset(self, bits: int, granularity: str, group_size: int | None) -> int: ...

    def weight_problem(self, shape: tuple[int, ...], axis: int, group_size: int) -> str | None:
        """Why this weight's blocks of group_size cannot be stored, or None."""
        ...

    def default_group_size(self, weight: Weight, codebook: str, bits: int) -> int | None:
        """The blocks (of this many weights per channel) the format gives a weight quantized per
        channel without --group-size; None: one set of parameters per channel."""
        ...

    def notes(self, widths: set[int]) -> list[str]:
        """What the report should say about how these widths are stored."""
        ...

    def load_notes(self, weights: list[tuple[list[str], int]], packed_rows: bool) -> list[str]:
        """What loading the output will need, when the report should warn of it; weights: each
        stored weight's uses ("Gather input 0", ...) and element count."""
        ...

    def index_bytes(self, q: QuantizedTensor) -> int: ...

    def codebook_bytes(self, q: QuantizedTensor) -> int: ...

    def file_bytes(self, q: QuantizedTensor, shape: tuple[int, ...], uses: list[str]) -> tuple[int, int]:
        """(index, codebook) bytes the output will hold for a weight of this shape and these uses
        ("MatMul input 1", ...), for a prediction: what a fused reader pads and keeps included."""
        ...

    def replace_consumer(
        self,
        q: QuantizedTensor,
        weight,
        node: onnx.NodeProto,
        block: int | None,
        opset: int,
        packed_rows: bool,
    ) -> Replacement | str | None:
        """The node that replaces a reader of the weight, or why not, or None: store the weight whole."""
        ...

    def stored(self, model: onnx.ModelProto, graph: onnx.GraphProto, read: Read) -> list[Stored]:
        """The weights that this format's own nodes in graph store (a WHOLE format reports the
        rest), read from the graph; read is for the values only a format that keeps no width in
        its nodes needs."""
        ...

    def unfuse(self, model: onnx.ModelProto, graph: onnx.GraphProto, evaluate) -> int:
        """For decompress: replace this format's fused readers in graph by plain ones of the decoded
        weights; how many weights. evaluate(nodes, outputs, extra initializers) runs nodes in
        onnxruntime."""
        ...


def stores_whole(fmt: StorageFormat) -> WholeWeights:
    """The format that stores fmt's whole weights."""
    if fmt.WHOLE is not None:
        return fmt.WHOLE
    return fmt  # type: ignore[return-value]  # a format without WHOLE stores whole weights itself
