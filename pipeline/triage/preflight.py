"""Checks a triage run makes before any patient work, each failing with one clear line (exit 2).

The output folder must not overlap the archive (`pipeline.io.safety.check_out_dir`) and must be
writable; a Dask scheduler, when named, must answer; the models must be a classifier returning
probabilities `(N, 2)` and a segmenter returning `(N, S, S, 1)` probabilities, each at the image
size its sidecar/logged config declares. Nothing here writes anything.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from pipeline.io.errors import ArchiveError
from pipeline.io.manifest import (
    INDEX_NAME,
    JOURNAL_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    SUMMARY_NAME,
    WORKLIST_NAME,
)
from pipeline.io.safety import check_out_dir


class CannotRunError(ValueError):
    """The run cannot start (bad `--out`, unreachable Dask, incompatible models)."""


class IncompatibleModelError(CannotRunError):
    """A model's shapes or outputs do not fit its role in triage."""


def check_out_writable(out: Path) -> None:
    """`out` is a folder (or can be made one) that this user can write into.

    Raises:
        CannotRunError: `out` is a file, neither it nor its nearest existing parent is writable,
            or one of the run's own files there is a folder or a link (never written through).
    """
    if out.exists() and not out.is_dir():
        raise CannotRunError(f"--out {out} exists and is not a folder")
    for name in (MANIFEST_NAME, JOURNAL_NAME, SUMMARY_NAME, INDEX_NAME, WORKLIST_NAME, LOCK_NAME):
        path = out / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise CannotRunError(f"{path} is not a file this tool wrote; move it out of --out")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise CannotRunError(f"--out {out} is not writable (no write permission on {probe})")


def check_run_paths(archive: str | Path, out: str | Path) -> Path:
    """Archive present, output folder safe and writable; returns the resolved output folder.

    Raises:
        ArchiveError: the archive folder does not exist.
        UnsafeOutputError, CannotRunError: see `check_out_dir`, `check_out_writable`.
    """
    if not Path(archive).is_dir():
        raise ArchiveError(archive, "archive folder not found")
    out_r = check_out_dir(archive, out)
    check_out_writable(out_r)
    return out_r


def check_dask_address(address: str | None, timeout: float = 3.0) -> None:
    """A `tcp://host:port` scheduler answers a TCP connection ("local" and None need nothing).

    Raises:
        CannotRunError: malformed address or nobody listening.
    """
    if not address or address == "local":
        return
    url = urlparse(address)
    if url.scheme not in ("tcp", "tls") or not url.hostname or not url.port:
        raise CannotRunError(f"--dask-address {address!r} is not tcp://host:port or 'local'")
    try:
        with socket.create_connection((url.hostname, url.port), timeout=timeout):
            pass
    except OSError as exc:
        raise CannotRunError(
            f"cannot reach the Dask scheduler at {address} ({exc.strerror or exc})"
        ) from None


def _probe(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([np.zeros((size, size, 3)), rng.random((size, size, 3))]).astype(np.float32)


def _in_unit_interval(y: np.ndarray) -> bool:
    return bool(np.isfinite(y).all() and y.min() >= -1e-6 and y.max() <= 1 + 1e-6)


def check_model(loaded: Any, kind: str, name: str) -> None:
    """One forward pass on a probe batch: shapes and probability outputs fit `kind`.

    Args:
        loaded: a `pipeline.tracking.LoadedModel` (Keras model + `PreprocessConfig`).
        kind: "classifier" or "segmenter".
        name: how the user named the model (for the message).

    Raises:
        IncompatibleModelError: with what is wrong.
    """
    model, size = loaded.model, int(loaded.preprocess.image_size)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise IncompatibleModelError(f"{kind} {name}: input shape {shape}, expected (N, S, S, 3)")
    if any(d is not None and d != size for d in shape[1:3]):
        raise IncompatibleModelError(
            f"{kind} {name}: model input {shape[1]}x{shape[2]} but its config says {size} px"
        )
    y = np.asarray(model(_probe(size), training=False), dtype=np.float32)
    if kind == "classifier":
        if y.shape != (2, 2):
            raise IncompatibleModelError(f"{kind} {name}: output shape {y.shape}, expected (N, 2)")
        if not _in_unit_interval(y) or not np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
            raise IncompatibleModelError(
                f"{kind} {name}: outputs are not probabilities (logits? add a softmax)"
            )
    else:
        if y.shape not in ((2, size, size, 1), (2, size, size)):
            raise IncompatibleModelError(
                f"{kind} {name}: output shape {y.shape}, expected (N, {size}, {size}, 1)"
            )
        if not _in_unit_interval(y):
            raise IncompatibleModelError(
                f"{kind} {name}: outputs are not probabilities (logits? add a sigmoid)"
            )
