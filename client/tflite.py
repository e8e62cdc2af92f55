"""Export the catalogue scorer of one global model as a TFLite file, for devices that run no TensorFlow.

The model holds phi(c) [n_items, dim] and b(c) [n_items] as precomputed constants (`client.device.item_tables`,
so the item formula stays in `common.model`) together with W_int, theta_ctx and b_0, and computes

    q      = theta + W_int^T x                                                            [dim]
    shift  = theta_ctx . x + b_0                                                          [1]
    scores = (phi q + b) + shift                                                          [n_items]

Signature "serving_default": inputs theta [dim] and ctx [context_dim] (float32; ctx has shape [0] and is not
read when the model has no context); outputs scores [n_items] (float32), top_values [k] (float32) and
top_indices [k] (int32), the k best items over the whole catalogue (TOPK_V2; no history excluded).
Builtin ops only (RESHAPE, BATCH_MATMUL, ADD, TOPK_V2, as TensorFlow's converter emits for the same function),
no Flex/select TF ops.

The file is written directly with the TFLite schema's flatbuffers bindings (the `tflite` package), without
TensorFlow: the command answers in a fraction of a second instead of paying TensorFlow's import and converter.
`TFLiteScorer` (tests, benchmarks) runs a file with TensorFlow's own interpreter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import flatbuffers
import numpy as np
import tflite as schema

from client.device import item_tables
from common.io import write_atomic

__all__ = ["SIGNATURE", "INPUTS", "OUTPUTS", "export_scorer", "scorer_flatbuffer", "TFLiteScorer"]

SIGNATURE = "serving_default"
INPUTS = ("theta", "ctx")
OUTPUTS = ("scores", "top_values", "top_indices")

#: alignment of constant data inside the file (the interpreter maps it in place)
_ALIGN = 16


class _Graph:
    """One subgraph being assembled: tensors (name, shape, dtype, constant data or None) and builtin operators."""

    _TYPES = {np.dtype(np.float32): schema.TensorType.FLOAT32, np.dtype(np.int32): schema.TensorType.INT32}

    def __init__(self) -> None:
        self.tensors: list[tuple[str, tuple[int, ...], np.dtype, np.ndarray | None]] = []
        self.ops: list[tuple[int, list[int], list[int]]] = []  # (builtin operator, inputs, outputs)

    def tensor(self, name: str, shape: tuple[int, ...], dtype=np.float32) -> int:
        self.tensors.append((name, tuple(int(d) for d in shape), np.dtype(dtype), None))
        return len(self.tensors) - 1

    def const(self, name: str, value: np.ndarray, dtype=np.float32) -> int:
        value = np.array(value, dtype=dtype, order="C")  # keeps a 0-d value 0-d (a scalar tensor)
        self.tensors.append((name, value.shape, value.dtype, value))
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], out: list[tuple[str, tuple[int, ...], type]]) -> list[int]:
        outputs = [self.tensor(*o) for o in out]
        self.ops.append((code, inputs, outputs))
        return outputs

    def reshape(self, x: int, shape: tuple[int, ...]) -> int:
        name = self.tensors[x][0]
        new = self.const(f"{name}/shape", np.array(shape, np.int32), np.int32)
        return self.op(schema.BuiltinOperator.RESHAPE, [x, new], [(f"{name}/reshaped", shape, np.float32)])[0]

    def column(self, x: int) -> int:
        """The vector x [n] as a column [n, 1]."""
        return self.reshape(x, (self.tensors[x][1][0], 1))

    def matvec(self, name: str, matrix: int, col: int) -> int:
        """matrix [m, n] times the column col [n, 1] -> [m] (BATCH_MATMUL and RESHAPE, as the converter does)."""
        m, _ = self.tensors[matrix][1]
        prod = self.op(schema.BuiltinOperator.BATCH_MATMUL, [matrix, col], [(name, (m, 1), np.float32)])[0]
        return self.reshape(prod, (m,))

    def add(self, name: str, a: int, b: int) -> int:
        return self.op(schema.BuiltinOperator.ADD, [a, b], [(name, self.tensors[a][1], np.float32)])[0]


def _scorer_graph(phi: np.ndarray, bias: np.ndarray, interaction: np.ndarray, shift: np.ndarray,
                  global_bias: float, k: int) -> tuple[_Graph, dict[str, int], dict[str, int]]:
    """The scorer's ops: phi [n_items, dim], bias [n_items], interaction [context_dim, dim], shift [context_dim]."""
    dim = phi.shape[1]
    context_dim = shift.shape[0]
    g = _Graph()
    theta = g.tensor(INPUTS[0], (dim,))
    ctx = g.tensor(INPUTS[1], (context_dim,))
    if context_dim:
        ctx_col = g.column(ctx)                                                            # [context_dim, 1]
        q = g.add("q", theta, g.matvec("interaction_x", g.const("interaction_t", interaction.T), ctx_col))
        shift_x = g.add("shift", g.matvec("shift_x", g.const("shift_row", shift[None]), ctx_col),
                        g.const("global_bias", np.array([global_bias])))                  # [1]
        phi_q = g.matvec("phi_q", g.const("phi", phi), g.column(q))                        # [n_items]
        scores = g.add(OUTPUTS[0], g.add("phi_q_plus_b", phi_q, g.const("bias", bias)), shift_x)
    else:  # q = theta and shift = b_0, folded into b as the converter folds it (ctx [0] is not read)
        phi_q = g.matvec("phi_q", g.const("phi", phi), g.column(theta))
        scores = g.add(OUTPUTS[0], phi_q, g.const("bias_plus_b0", bias + np.float32(global_bias)))
    values, indices = g.op(schema.BuiltinOperator.TOPK_V2, [scores, g.const("k", np.array(k, np.int32), np.int32)],
                           [(OUTPUTS[1], (k,), np.float32), (OUTPUTS[2], (k,), np.int32)])
    return g, {INPUTS[0]: theta, INPUTS[1]: ctx}, {OUTPUTS[0]: scores, OUTPUTS[1]: values, OUTPUTS[2]: indices}


_OPTIONS = {  # builtin operator -> (BuiltinOptions type, writer of its options table)
    schema.BuiltinOperator.RESHAPE: (schema.BuiltinOptions.NONE, None),
    schema.BuiltinOperator.BATCH_MATMUL: (schema.BuiltinOptions.BatchMatMulOptions,
                                          lambda b: (schema.BatchMatMulOptionsStart(b),
                                                     schema.BatchMatMulOptionsEnd(b))[1]),
    schema.BuiltinOperator.ADD: (schema.BuiltinOptions.AddOptions,
                                 lambda b: (schema.AddOptionsStart(b), schema.AddOptionsEnd(b))[1]),
    schema.BuiltinOperator.TOPK_V2: (schema.BuiltinOptions.TopKV2Options,
                                     lambda b: (schema.TopKV2OptionsStart(b), schema.TopKV2OptionsEnd(b))[1]),
}


def _int_vector(b: flatbuffers.Builder, values) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(list(values)):
        b.PrependInt32(int(v))
    return b.EndVector()


def _offset_vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _bytes_vector(b: flatbuffers.Builder, data: bytes) -> int:
    """A [ubyte] vector whose first byte is aligned to _ALIGN in the finished file."""
    b.StartVector(1, len(data), _ALIGN)
    b.head -= len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _tensor_maps(b: flatbuffers.Builder, named: dict[str, int]) -> int:
    maps = []
    for name in sorted(named):
        s = b.CreateString(name)
        schema.TensorMapStart(b)
        schema.TensorMapAddName(b, s)
        schema.TensorMapAddTensorIndex(b, named[name])
        maps.append(schema.TensorMapEnd(b))
    return _offset_vector(b, maps)


def _serialize(g: _Graph, inputs: dict[str, int], outputs: dict[str, int]) -> bytes:
    """The graph as a TFLite model flatbuffer (schema version 3; one subgraph; one signature)."""
    b = flatbuffers.Builder(1024 + sum(t[3].nbytes + 2 * _ALIGN for t in g.tensors if t[3] is not None))
    # buffers: 0 is the empty sentinel; one per constant tensor
    buffers, buffer_of = [], {}
    schema.BufferStart(b)
    buffers.append(schema.BufferEnd(b))
    for i, (_, _, _, value) in enumerate(g.tensors):
        if value is not None:
            data = _bytes_vector(b, value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
            schema.BufferStart(b)
            schema.BufferAddData(b, data)
            buffer_of[i] = len(buffers)
            buffers.append(schema.BufferEnd(b))
    tensors = []
    for i, (name, shape, dtype, _) in enumerate(g.tensors):
        s, dims = b.CreateString(name), _int_vector(b, shape)
        schema.TensorStart(b)
        schema.TensorAddShape(b, dims)
        schema.TensorAddType(b, _Graph._TYPES[dtype])
        schema.TensorAddBuffer(b, buffer_of.get(i, 0))
        schema.TensorAddName(b, s)
        tensors.append(schema.TensorEnd(b))
    codes = sorted({code for code, _, _ in g.ops})
    operators = []
    for code, ins, outs in g.ops:
        kind, write = _OPTIONS[code]
        options = write(b) if write else None
        ins_v, outs_v = _int_vector(b, ins), _int_vector(b, outs)
        schema.OperatorStart(b)
        schema.OperatorAddOpcodeIndex(b, codes.index(code))
        schema.OperatorAddInputs(b, ins_v)
        schema.OperatorAddOutputs(b, outs_v)
        if options is not None:
            schema.OperatorAddBuiltinOptionsType(b, kind)
            schema.OperatorAddBuiltinOptions(b, options)
        operators.append(schema.OperatorEnd(b))
    tensors_v, ops_v = _offset_vector(b, tensors), _offset_vector(b, operators)
    sg_in, sg_out = _int_vector(b, inputs.values()), _int_vector(b, outputs.values())
    sg_name = b.CreateString("main")
    schema.SubGraphStart(b)
    schema.SubGraphAddTensors(b, tensors_v)
    schema.SubGraphAddInputs(b, sg_in)
    schema.SubGraphAddOutputs(b, sg_out)
    schema.SubGraphAddOperators(b, ops_v)
    schema.SubGraphAddName(b, sg_name)
    subgraphs_v = _offset_vector(b, [schema.SubGraphEnd(b)])
    opcodes = []
    for code in codes:  # every code used here is < 127, so the deprecated int8 field holds it too
        schema.OperatorCodeStart(b)
        schema.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        schema.OperatorCodeAddBuiltinCode(b, code)
        schema.OperatorCodeAddVersion(b, 1)
        opcodes.append(schema.OperatorCodeEnd(b))
    opcodes_v = _offset_vector(b, opcodes)
    sig_in, sig_out, key = _tensor_maps(b, inputs), _tensor_maps(b, outputs), b.CreateString(SIGNATURE)
    schema.SignatureDefStart(b)
    schema.SignatureDefAddInputs(b, sig_in)
    schema.SignatureDefAddOutputs(b, sig_out)
    schema.SignatureDefAddSignatureKey(b, key)
    schema.SignatureDefAddSubgraphIndex(b, 0)
    signatures_v = _offset_vector(b, [schema.SignatureDefEnd(b)])
    buffers_v = _offset_vector(b, buffers)
    description = b.CreateString("fedctx catalogue scorer")
    schema.ModelStart(b)
    schema.ModelAddVersion(b, 3)
    schema.ModelAddOperatorCodes(b, opcodes_v)
    schema.ModelAddSubgraphs(b, subgraphs_v)
    schema.ModelAddDescription(b, description)
    schema.ModelAddBuffers(b, buffers_v)
    schema.ModelAddSignatureDefs(b, signatures_v)
    b.Finish(schema.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def scorer_flatbuffer(params: Mapping[str, np.ndarray], item_h: np.ndarray, k: int = 10) -> bytes:
    """The TFLite file (bytes) of the scorer of `params` (shared parameters, hybrid or not) over item_h
    [n_items, text_dim]; k: length of the top-k outputs, 1 <= k <= n_items."""
    n_items = np.shape(item_h)[0]
    if not 1 <= k <= n_items:
        raise ValueError(f"k: must be in [1, n_items={n_items}]. Found {k}.")
    tables = item_tables(params, item_h)  # the model's float32 values, held as float64
    graph = _scorer_graph(tables.phi.astype(np.float32), tables.bias.astype(np.float32),
                          np.asarray(params["context/interaction"], np.float32),
                          np.asarray(params["context/shift"], np.float32), float(params["global-bias"][0]), k)
    return _serialize(*graph)


def export_scorer(params: Mapping[str, np.ndarray], item_h: np.ndarray, path: str | os.PathLike, k: int = 10) -> Path:
    """Write the TFLite scorer of `params` over item_h [n_items, text_dim] (`scorer_flatbuffer`) to `path`
    (replaced atomically: common.io.write_atomic) and return it."""
    return write_atomic(path, scorer_flatbuffer(params, item_h, k))


class TFLiteScorer:
    """Runs an exported scorer with TensorFlow's TFLite interpreter (imported here, not at module import):
    TFLiteScorer(path)(theta [dim], ctx [context_dim]) -> {output name: array}."""

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        import tensorflow as tf

        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)
        self._run = self.interpreter.get_signature_runner(SIGNATURE)

    def __call__(self, theta: np.ndarray, ctx: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(theta=np.asarray(theta, np.float32), ctx=np.asarray(ctx, np.float32))
