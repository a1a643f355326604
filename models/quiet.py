"""Keep TensorFlow's native start-up noise out of the user's terminal on machines without a GPU.

TensorFlow's C++ side writes "Could not find cuda drivers", "failed call to cuInit" and oneDNN
notices straight to file descriptor 2 while it is imported (and at its first graph with an integer
op, oneDNN's "supports DT_INT32 only on platforms with AVX-512"), before any Python logging setting
applies. On a machine with no NVIDIA driver those lines say nothing useful, so the command line
imports TensorFlow once with descriptor 2 pointed at /dev/null. A Python exception raised by the
import still reaches the user (descriptor 2 is restored first); machines with a GPU keep every line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

from models.precision import onednn_setting


def has_nvidia_driver() -> bool:
    """Whether this machine has an NVIDIA driver loaded (then CUDA messages matter)."""
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidiactl").exists()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (Python's `sys.stderr` object is kept)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow without its CUDA/oneDNN notices when the machine has no NVIDIA driver."""
    if has_nvidia_driver() or importlib.util.find_spec("tensorflow") is None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # also the cuInit error at first use
    with native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs here, not in the user's run
        if onednn_setting() == "1":
            # oneDNN's once-a-process notice that it leaves integer ops to Eigen on a CPU
            # without AVX-512 comes with the first graph holding one (a training step): here.
            tf.function(lambda a: tf.transpose(a + a), autograph=False)(tf.constant([[0, 1]]))
