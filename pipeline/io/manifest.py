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
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
#: Finished patients since `manifest.json` was last written, one JSON line each (appended).
JOURNAL_NAME = ".manifest.journal"
LOCK_NAME = ".triage.lock"
STAGING_NAME = ".staging"
SUMMARY_NAME = "summary.csv"
INDEX_NAME = "index.html"
WORKLIST_NAME = "worklist.js"  # run details and worklist order, for the reports' navigation
#: Names the run itself owns in `OUT/` (lower case): no patient folder may take one of them.
RUN_FILES = frozenset(n.lower() for n in (MANIFEST_NAME, JOURNAL_NAME, LOCK_NAME, STAGING_NAME,
                                          SUMMARY_NAME, INDEX_NAME, WORKLIST_NAME))  # fmt: skip
_MANIFEST_VERSION = 1
_manifest_guard = threading.Lock()


class OutputLockedError(RuntimeError):
    """Another triage run holds the output folder."""


class OutputStateError(RuntimeError):
    """Something in the output folder is not what this run wrote (a link, a file for a folder)."""


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
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputStateError(f"{path} is not a lock file this tool wrote; remove it by hand")
    # O_NOFOLLOW: a lock planted as a link must never truncate the file it points to.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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


def atomic_write(path: Path, write: Callable[[str], object], durable: bool = True) -> Path:
    """Call `write(tmp)` on a temporary sibling, fsync it, then `os.replace` it onto `path`.

    The one atomic-write helper of the package (reports, masks, NIfTI, DICOM SEG). The sibling
    keeps `path`'s suffixes (writers pick formats by them) and is created by the writer, so the
    file gets the user's umask (e.g. 0644), not `mkstemp`'s 0600: a team can share the outputs.

    Args:
        durable: fsync before the rename (~6 ms a file). Per-patient files in a staging folder
            pass False: the folder's one rename commits them, and a resumed run re-checks every
            output's hash, so a file lost to a crash is redone rather than trusted.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        write(str(tmp))
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write` of bytes."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def staging_dir(out_dir: Path, name: str) -> Path:
    """A fresh, empty staging folder in `out_dir` (same filesystem: the final move is a rename).

    Args:
        out_dir: the run's output folder.
        name: the folder's final name (the patient key), kept in the staging name for debugging.
    """
    root = out_dir / STAGING_NAME
    if root.is_symlink():
        raise OutputStateError(f"{root} is a symbolic link; refusing to write through it")
    path = root / f"{name}.{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    return path


def _is_output_folder(path: Path) -> bool:
    """A real folder (not a link) holding a `report.json`: something a triage run wrote."""
    return path.is_dir() and not path.is_symlink() and (path / "report.json").is_file()


def commit_dir(staging: Path, final: Path) -> None:
    """Move a finished staging folder onto `final`, replacing an older `final` if present.

    A directory cannot be `os.replace`d onto a non-empty one, so the old one is first renamed aside;
    a crash between the two renames leaves no folder, and the patient is simply redone next run.
    Only an earlier output (a real folder with a `report.json`, directly in the staging folder's
    output folder) is ever replaced: anything else in the way is left alone and this raises.

    Raises:
        OutputStateError: `final` is not a plain name in the output folder, or something that is
            not an earlier triage output is in its place.
    """
    out_dir = staging.parent.parent
    if final.parent.resolve() != out_dir.resolve() or final.name.lower() in RUN_FILES:
        raise OutputStateError(f"{final} is not a patient folder of {out_dir}")
    old: Path | None = None
    if final.exists() or final.is_symlink():
        if not _is_output_folder(final):
            raise OutputStateError(f"{final} exists and is not a triage output; not replaced")
        old = staging.parent / f"{final.name}.old.{uuid.uuid4().hex[:12]}"
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_staging(out_dir: Path) -> None:
    """Remove staging leftovers of killed runs (call only while holding the lock).

    Raises:
        OutputStateError: `OUT/.staging` is a link or a file (never followed or removed).
    """
    root = out_dir / STAGING_NAME
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise OutputStateError(f"{root} is not a staging folder this tool wrote; remove it by hand")
    shutil.rmtree(root, ignore_errors=True)


def files_digest(paths: Iterable[str | Path]) -> str:
    """SHA-256 over the names and contents of `paths` (in the order given).

    Only base names enter the hash, so moving an archive does not invalidate finished patients.
    """
    h = hashlib.sha256()
    for p in paths:
        path = Path(p)
        h.update(os.fsencode(path.name) + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


_remembered: dict[tuple[Any, ...], str] = {}
_remembered_lock = threading.Lock()


def remembered_digest(paths: Iterable[str | Path], compute: Callable[[], str], kind: str) -> str:
    """`compute()` once per unchanged set of files and `kind`, then its remembered value.

    `kind` names what `compute` returns: two callers that digest the same files differently
    (a short content digest, an export cache key) must never be served each other's value.

    Keyed on each file's resolved path, size, modification time (ns) and inode: a model file is
    hashed once per process instead of once per patient, and a file rewritten or replaced in
    place is hashed again. Meant for a few large files (models), not for patient inputs.
    """
    stamp = []
    for p in paths:
        st = os.stat(p)
        stamp.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns, st.st_ino))
    key = (kind, *stamp)
    with _remembered_lock:
        if key in _remembered:
            return _remembered[key]
    value = compute()
    with _remembered_lock:
        _remembered[key] = value
    return value


def run_key(input_hash: str, models: Mapping[str, str], settings: Mapping[str, Any]) -> str:
    """Key of one patient's work: its inputs, the model versions and the triage settings."""
    blob = json.dumps(
        {"input": input_hash, "models": dict(models), "settings": dict(settings)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_manifest(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Patient key → entry (`key`, `status`, ...): `OUT/manifest.json`, then the patients the
    journal recorded since it was written (a later line wins); empty when neither exists.

    An unreadable manifest counts as empty and an unreadable journal line (a run killed while
    appending it) as absent: those patients are redone and nothing is lost. A journal that is not
    a plain file (a link planted in `OUT`) is never read.
    """
    patients: dict[str, dict[str, Any]] = {}
    path = out_dir / MANIFEST_NAME
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            patients = dict(data.get("patients", {}))
        except (OSError, ValueError, AttributeError):
            patients = {}
    journal = out_dir / JOURNAL_NAME
    if journal.is_file() and not journal.is_symlink():
        try:
            lines = journal.read_bytes().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                item = json.loads(line)
                patients[str(item["patient"])] = dict(item["entry"])
            except (ValueError, KeyError, TypeError):
                continue
    return patients


def record_patient(out_dir: Path, patient: str, entry: Mapping[str, Any]) -> None:
    """Record one patient's entry: one line appended to the journal and fsynced (thread-safe).

    Appending keeps a run's bookkeeping linear in its patients (rewriting `manifest.json` for
    each patient grew with the square of the archive); `compact_manifest` folds the journal into
    `manifest.json` at the end of the run.

    Raises:
        OutputStateError: the journal's name is taken by a link or something not a plain file.
    """
    line = json.dumps({"patient": patient, "entry": dict(entry)}, default=str) + "\n"
    path = out_dir / JOURNAL_NAME
    with _manifest_guard:
        # O_NOFOLLOW: a link planted in its place is never written through; O_NONBLOCK: a FIFO
        # planted there fails at once instead of waiting for a reader.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise OutputStateError(f"{path} is not a file this tool wrote ({reason})") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OutputStateError(f"{path} is not a file this tool wrote; move it out of OUT")
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)


def compact_manifest(out_dir: Path) -> None:
    """Fold the journal into `manifest.json` (written atomically), then remove the journal.

    Killed between the two steps, the journal's lines are applied again on load: the same
    entries, so nothing changes.
    """
    with _manifest_guard:
        journal = out_dir / JOURNAL_NAME
        if not journal.is_file() or journal.is_symlink():
            return
        patients = load_manifest(out_dir)
        payload = {"version": _MANIFEST_VERSION, "patients": dict(sorted(patients.items()))}
        atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(payload, indent=1, default=str))
        journal.unlink()


def output_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file directly in a patient's output folder, by file name."""
    return {
        p.name: files_digest([p])
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink()
    }


def is_done(
    manifest: Mapping[str, Mapping[str, Any]],
    out_dir: Path,
    patient: str,
    key: str,
    folder: str | None = None,
) -> bool:
    """True when `patient` finished with the same key and every output it lists is unchanged.

    Args:
        manifest: `load_manifest(out_dir)`.
        out_dir: the run's output folder.
        patient: the patient key (manifest entries are keyed on it).
        key: this run's key for the patient (`run_key`).
        folder: the patient's output folder name (default: the key itself).
    """
    entry = manifest.get(patient)
    if not entry or entry.get("status") != "done" or entry.get("key") != key:
        return False
    path = out_dir / (folder or entry.get("folder") or patient)
    if not _is_output_folder(path):
        return False
    recorded = entry.get("outputs") or {}  # no recorded outputs (older entry): redo
    return bool(recorded) and all(
        (path / name).is_file() and files_digest([path / name]) == digest
        for name, digest in dict(recorded).items()
    )
