"""Export the catalogue scorer of one global model as a TFLite file, for devices that run no TensorFlow.

The model holds phi(c) [n_items, dim] and b(c) [n_items] as precomputed constants (`client.device.item_tables`,
so the item formula stays in `common.model`) together with W_int, theta_ctx and b_0, and computes

    scores = phi (theta_u + W_int^T x) + b + (theta_ctx . x + b_0)                        [n_items]

Signature "serving_default": inputs theta [dim] and ctx [context_dim] (float32; ctx has shape [0] when the model
has no context); outputs scores [n_items] (float32), top_values [k] (float32) and top_indices [k] (int32), the
k best items over the whole catalogue (tf.math.top_k, the TFLite builtin TOPK_V2; no history excluded).
Builtin ops only (no Flex/select TF ops).
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import tensorflow as tf

from client.device import item_tables

__all__ = ["SIGNATURE", "INPUTS", "OUTPUTS", "export_scorer", "TFLiteScorer"]

SIGNATURE = "serving_default"
INPUTS = ("theta", "ctx")
OUTPUTS = ("scores", "top_values", "top_indices")


class _Scorer(tf.Module):
    """The catalogue scorer with every shared parameter frozen into constants."""

    def __init__(self, phi: np.ndarray, bias: np.ndarray, interaction: np.ndarray, shift: np.ndarray,
                 global_bias: float, k: int) -> None:
        super().__init__()
        self._phi = tf.constant(phi, tf.float32)                   # [n_items, dim]
        self._bias = tf.constant(bias, tf.float32)                 # [n_items]
        self._interaction = tf.constant(interaction, tf.float32)   # [context_dim, dim]
        self._shift = tf.constant(shift, tf.float32)               # [context_dim]
        self._global_bias = tf.constant(global_bias, tf.float32)   # []
        self._k = k
        dim, context_dim = phi.shape[1], shift.shape[0]
        self.score = tf.function(self._score, input_signature=[tf.TensorSpec([dim], tf.float32, name=INPUTS[0]),
                                                               tf.TensorSpec([context_dim], tf.float32, name=INPUTS[1])])

    def _score(self, theta: tf.Tensor, ctx: tf.Tensor) -> dict[str, tf.Tensor]:
        q = theta + tf.linalg.matvec(self._interaction, ctx, transpose_a=True)        # [dim]
        shift = tf.tensordot(self._shift, ctx, axes=1) + self._global_bias            # []
        scores = tf.linalg.matvec(self._phi, q) + self._bias + shift                  # [n_items]
        values, indices = tf.math.top_k(scores, k=self._k)
        return {OUTPUTS[0]: scores, OUTPUTS[1]: values, OUTPUTS[2]: tf.cast(indices, tf.int32)}


def export_scorer(params: Mapping[str, np.ndarray], item_h: np.ndarray, path: str | os.PathLike, k: int = 10) -> Path:
    """Write the TFLite scorer of `params` (shared parameters, hybrid or not) over item_h [n_items, text_dim]
    to `path` (replaced atomically) and return it. k: length of the top-k outputs, 1 <= k <= n_items."""
    n_items = np.shape(item_h)[0]
    if not 1 <= k <= n_items:
        raise ValueError(f"k: must be in [1, n_items={n_items}]. Found {k}.")
    tables = item_tables(params, item_h)
    module = _Scorer(tables.phi, tables.bias, np.asarray(params["context/interaction"], np.float32),
                     np.asarray(params["context/shift"], np.float32), float(params["global-bias"][0]), k)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.score.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with _quiet_output():  # the converter's summary lines, `(f32: 3)` ...
        blob = converter.convert()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    return path


@contextmanager
def _quiet_output() -> Iterator[None]:
    """Send what is written to file descriptors 1 and 2 to a temporary file for the duration (the converter's C++
    side prints its op summary and lines such as `(f32: 3)` there, past Python's sys.stdout); on an exception,
    the captured text goes to stderr before the exception goes on."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
        except BaseException:
            failed = True
            raise
        finally:
            for fd, copy in ((1, saved[0]), (2, saved[1])):
                os.dup2(copy, fd)
                os.close(copy)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))


class TFLiteScorer:
    """Runs an exported scorer: TFLiteScorer(path)(theta [dim], ctx [context_dim]) -> {output name: array}."""

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)
        self._run = self.interpreter.get_signature_runner(SIGNATURE)

    def __call__(self, theta: np.ndarray, ctx: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(theta=np.asarray(theta, np.float32), ctx=np.asarray(ctx, np.float32))
