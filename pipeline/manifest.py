"""Reliable batch runs: a manifest of finished patients, atomic writes and an output-folder lock.

A patient is *done* when the manifest holds an entry for it whose key (hash of its input files, the
model versions and the triage settings) equals the key of the run at hand and its folder exists.
Each patient's outputs are written into a staging folder and moved into place in one rename, so a
run killed halfway leaves either the old folder or the new one, never half of each. The lock (an
`fcntl` lock on `OUT/.triage.lock`, released by the kernel when the holder dies) keeps a second run
on the same output folder from interleaving its writes with the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".triage.lock"
STAGING_NAME = ".staging"
_MANIFEST_VERSION = 1
_manifest_guard = threading.Lock()


class OutputLockedError(RuntimeError):
    """Another triage run holds the output folder."""


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[Path]:
    """Hold an exclusive lock on `out_dir` for the duration of the block.

    Args:
        out_dir: the run's output folder (created if absent).

    Yields:
        The lock file's path.

    Raises:
        OutputLockedError: another process (or another run in this one) holds the lock.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(encoding="utf-8").strip() or "unknown"
            raise OutputLockedError(
                f"another triage run (pid {holder}) is writing to {out_dir}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        os.close(fd)  # closing releases the flock


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary sibling, fsync it, then `os.replace` it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def staging_dir(out_dir: Path, name: str) -> Path:
    """A fresh, empty staging folder in `out_dir` (same filesystem: the final move is a rename).

    Args:
        out_dir: the run's output folder.
        name: the folder's final name (the patient key), kept in the staging name for debugging.
    """
    path = out_dir / STAGING_NAME / f"{name}.{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    return path


def commit_dir(staging: Path, final: Path) -> None:
    """Move a finished staging folder onto `final`, replacing an older `final` if present.

    A directory cannot be `os.replace`d onto a non-empty one, so the old one is first renamed aside;
    a crash between the two renames leaves no folder, and the patient is simply redone next run.
    """
    old: Path | None = None
    if final.exists():
        old = staging.parent / f"{final.name}.old.{uuid.uuid4().hex[:12]}"
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_staging(out_dir: Path) -> None:
    """Remove staging leftovers of killed runs (call only while holding the lock)."""
    shutil.rmtree(out_dir / STAGING_NAME, ignore_errors=True)


def files_digest(paths: Iterable[str | Path]) -> str:
    """SHA-256 over the names and contents of `paths` (in the order given).

    Only base names enter the hash, so moving an archive does not invalidate finished patients.
    """
    h = hashlib.sha256()
    for p in paths:
        path = Path(p)
        h.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def run_key(input_hash: str, models: Mapping[str, str], settings: Mapping[str, Any]) -> str:
    """Key of one patient's work: its inputs, the model versions and the triage settings."""
    blob = json.dumps(
        {"input": input_hash, "models": dict(models), "settings": dict(settings)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_manifest(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Patient key → entry (`key`, `status`, ...) from `OUT/manifest.json`; empty when absent.

    An unreadable manifest counts as empty: everything is redone and nothing is lost.
    """
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data.get("patients", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def record_patient(out_dir: Path, patient: str, entry: Mapping[str, Any]) -> None:
    """Add or replace one patient's entry, rewriting the manifest atomically (thread-safe)."""
    with _manifest_guard:
        patients = load_manifest(out_dir)
        patients[patient] = dict(entry)
        payload = {"version": _MANIFEST_VERSION, "patients": dict(sorted(patients.items()))}
        atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(payload, indent=1, default=str))


def is_done(
    manifest: Mapping[str, Mapping[str, Any]], out_dir: Path, patient: str, key: str
) -> bool:
    """True when `patient` finished with the same key and its report is still in place."""
    entry = manifest.get(patient)
    if not entry or entry.get("status") != "done" or entry.get("key") != key:
        return False
    return (out_dir / patient / "report.json").is_file()
