"""A Keras model behind one compiled `tf.function`: a few fixed batch shapes, optionally XLA.

Why fixed shapes: TensorFlow's CPU kernels (oneDNN) and XLA keep compiled code per input shape.
Fed every patient's own slice count, a model sees a new last-batch size for most patients and
keeps what it built for each: memory grew by about 1.3 MB a patient over 70 synthetic patients of
10-44 slices, and flattened once the last batch was padded. `BatchPredictor` pads a short batch
up to the next of `batch_buckets(batch)` (powers of two, then `batch`), so at most
log2(batch) + 2 shapes exist, and pads into one reused buffer; padding rows are dropped.
Padding to buckets rather than always to `batch` wastes at most half of the last batch.

XLA (`jit=True`): the forward pass is compiled with `jit_compile=True` (the GPU path, with
`mixed_float16`; `models.precision.inference_plan` decides). When XLA cannot compile the model
(an op without an XLA kernel, no XLA for this device), the predictor says so once in the log and
runs the plain compiled function instead, so a run never fails for it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def batch_buckets(batch: int) -> tuple[int, ...]:
    """The batch sizes a `BatchPredictor` feeds its model: powers of two below `batch`, and `batch`.

    >>> batch_buckets(16), batch_buckets(12), batch_buckets(1)
    ((1, 2, 4, 8, 16), (1, 2, 4, 8, 12), (1,))
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    sizes = [1 << k for k in range(batch.bit_length()) if 1 << k < batch]
    return (*sizes, batch)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `n` slices (`n` at most the largest bucket)."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"{n} slices do not fit the largest bucket {buckets[-1]}")


class BatchPredictor:
    """A Keras model behind one compiled `tf.function`, fed in batches of a few fixed sizes.

    Thread-safe. Predictors built with the same `lock` run one call at a time: TensorFlow already
    spreads one call over every core, so two patients' model calls at once only fight over the
    cores, while other threads read, post-process and write. `seconds` counts the time spent
    computing (holding the lock), not waiting for it; `slices` the slices predicted (no padding).

    Args:
        model: a Keras model taking `(N, S, S, C)` float32.
        batch: most slices per model call.
        lock: shared with the other predictors of this process (None: its own).
        jit: compile with XLA (falls back to the plain function when XLA cannot compile it).
    """

    def __init__(
        self, model: Any, batch: int = 16, lock: threading.Lock | None = None, jit: bool = False
    ) -> None:
        import tensorflow as tf

        self.model = model
        self.batch = int(batch)
        self.buckets = batch_buckets(self.batch)
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        self._plain = tf.function(self._forward, input_signature=[spec], reduce_retracing=True)
        self._fn = self._plain
        if jit:
            self._fn = tf.function(self._forward, input_signature=[spec], jit_compile=True)
        self.xla = bool(jit)
        self._compute = lock if lock is not None else threading.Lock()
        self._lock = threading.Lock()
        self._pad = np.zeros((self.batch, *model.input_shape[1:]), np.float32)
        self.seconds = 0.0
        self.slices = 0
        self.computed = 0  # slices the model computed, padding included

    def _forward(self, x: Any) -> Any:
        return self.model(x, training=False)

    def _run(self, part: np.ndarray) -> np.ndarray:
        """One model call on a bucket-sized batch (XLA, or the plain function after a fallback)."""
        if not self.xla:
            return np.asarray(self._fn(part), dtype=np.float32)
        import tensorflow as tf

        try:
            return np.asarray(self._fn(part), dtype=np.float32)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.NotFoundError, tf.errors.InternalError) as exc:  # fmt: skip
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
            log.warning(
                "XLA could not compile %s (%s); running it without XLA", self.model.name, why
            )
            self.xla, self._fn = False, self._plain
            return np.asarray(self._fn(part), dtype=np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Predict `(N, S, S, C)` float32 in batches; returns `(N, ...)` float32 outputs."""
        x = np.asarray(x, dtype=np.float32)
        out = np.empty((len(x), *self.model.output_shape[1:]), np.float32)
        if not len(x):
            return out
        with self._compute:  # the padding buffer is only touched under this lock
            start = time.perf_counter()
            for i in range(0, len(x), self.batch):
                part = x[i : i + self.batch]
                n, size = len(part), bucket_for(len(part), self.buckets)
                if size != n:
                    self._pad[:n] = part
                    self._pad[n:size] = 0.0
                    part = self._pad[:size]
                out[i : i + n] = self._run(part)[:n]
                self.computed += size
            spent = time.perf_counter() - start
        with self._lock:
            self.seconds += spent
            self.slices += len(x)
        return out
