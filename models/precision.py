"""Precision policies: which one to infer with, and rebuilding a float32 model under another.

`inference_policy()` picks `mixed_float16` on a GPU, `mixed_bfloat16` on a CPU with native bf16
(AMX or AVX512_BF16 in /proc/cpuinfo), else `float32`. `inference_plan(precision, xla, gpu,
flags)` turns a run's `--precision` and `--xla` into that policy and whether to compile with XLA
(on by default with a GPU only: on a CPU, XLA measured no faster than TF's own graph).
`rebuild_with_policy(model, policy)` clones a loaded model's architecture with every layer under
`policy` except the model's output layers (which our builders keep float32), then copies the
weights, so predictions stay float32.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: CPU flags that decide which precisions (and TensorFlow's oneDNN default) run natively.
KEY_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
             "amx_int8")  # fmt: skip


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in `cpuinfo` (empty when unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def key_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """Which of `KEY_FLAGS` this CPU has, in `KEY_FLAGS` order (reported with speed figures)."""
    flags = cpu_flags(cpuinfo)
    return [f for f in KEY_FLAGS if f in flags]


def onednn_setting() -> str:
    """This process's `TF_ENABLE_ONEDNN_OPTS`: "1" / "0" as set, or "default" (TensorFlow then
    turns its oneDNN CPU kernels on only with AVX-512 VNNI, bf16 or AMX). The `mri-triage` command
    sets "1" unless the user set it; training and inference speed depend on it."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")


def choose_policy(has_gpu: bool, flags: Collection[str]) -> str:
    """`mixed_float16` with a GPU, `mixed_bfloat16` on a CPU with native bf16, else `float32`."""
    if has_gpu:
        return "mixed_float16"
    if BF16_FLAGS & set(flags):
        return "mixed_bfloat16"
    return "float32"


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (a CUDA build with a visible device)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def inference_policy() -> str:
    """The policy to run inference with on this machine (see `choose_policy`)."""
    return choose_policy(has_gpu(), cpu_flags())


#: `--xla`: "auto" = on with a GPU, off on a CPU. (Keras is imported only where it is used, so
#: `pipeline.triage.settings` can read these choices cheaply.)
XLA_CHOICES = ("auto", "on", "off")


def inference_plan(precision: str, xla: str, gpu: bool, flags: Collection[str]) -> tuple[str, bool]:
    """`(dtype policy, compile with XLA)` for inference: pure, from the detected device.

    Args:
        precision: one of `POLICIES`, or "auto" (`choose_policy`: `mixed_float16` on a GPU).
        xla: one of `XLA_CHOICES`; "auto" compiles with XLA on a GPU only.
        gpu: TensorFlow sees a GPU (`has_gpu()`).
        flags: the CPU's feature flags (`cpu_flags()`).

    Raises:
        ValueError: `precision` or `xla` is not one of the allowed values.
    """
    if precision != "auto" and precision not in POLICIES:
        raise ValueError(f"precision must be one of {(*POLICIES, 'auto')}; got {precision!r}")
    if xla not in XLA_CHOICES:
        raise ValueError(f"xla must be one of {XLA_CHOICES}; got {xla!r}")
    policy = choose_policy(gpu, flags) if precision == "auto" else precision
    return policy, (gpu if xla == "auto" else xla == "on")


@contextmanager
def policy_scope(policy: str) -> Iterator[None]:
    """Set Keras' global dtype policy inside the block and restore the previous one after."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}; got {policy!r}")
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _retype(layer_cfgs: list[dict[str, Any]], policy: str, keep: set[str]) -> None:
    for layer in layer_cfgs:
        cfg = layer.get("config", {})
        if isinstance(cfg.get("layers"), list):  # a nested model: its layers all follow the policy
            _retype(cfg["layers"], policy, set())
        dtype = cfg.get("dtype")
        if (
            isinstance(dtype, dict)
            and dtype.get("class_name") == "DTypePolicy"
            and cfg.get("name") not in keep
        ):
            dtype["config"]["name"] = policy


def rebuild_with_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of a functional `model` whose layers compute under `policy`, with the same weights.

    The model's output layers keep their own dtype (float32 in our builders), so outputs stay
    float32.

    Args:
        model: a functional model (e.g. loaded from `.keras`, float32).
        policy: "float32", "mixed_float16" or "mixed_bfloat16".

    Returns:
        A new model; `model` itself is unchanged.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}; got {policy!r}")
    import keras

    serialized = copy.deepcopy(keras.saving.serialize_keras_object(model))
    config = serialized["config"]
    outputs = config.get("output_layers", [])
    if outputs and isinstance(outputs[0], str):  # a single output is stored unnested
        outputs = [outputs]
    keep = {entry[0] for entry in outputs}
    _retype(config["layers"], policy, keep)
    clone = keras.saving.deserialize_keras_object(serialized)
    clone.set_weights(model.get_weights())
    return clone
