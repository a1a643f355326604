"""Checks the command line makes before Prefect, MLflow or TensorFlow are imported.

A missing archive, a missing model file or a champion the tracking store does not hold answers in
well under a second with one line: what was looked for, where, and how to fix it. Nothing here
creates anything (a SQLite store is opened read-only; MLflow itself is not imported).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from pipeline.triage.settings import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER

DEFAULT_MODELS = {"classifier": DEFAULT_CLASSIFIER, "segmenter": DEFAULT_SEGMENTER}
_FIX = {
    "classifier": "train one with `mri-triage train classifier ARCHIVE --preset cpu` (it becomes "
    "the champion) or pass --classifier PATH.keras",
    "segmenter": "train one with `mri-triage train segmenter ARCHIVE --preset cpu` (it becomes "
    "the champion) or pass --segmenter PATH.keras",
}


def local_store_uri() -> str:
    """The tracking URI `pipeline.tracking.store_uri` gives (without creating it or importing
    MLflow; a URI set in-process with `mlflow.set_tracking_uri` is not seen here)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        root = Path.cwd()
    return f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"


def _registered(db: Path, name: str, ref: str) -> bool:
    """Whether the SQLite registry holds `name` at alias or version `ref`."""
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        if not ref or ref == "latest":
            row = con.execute("SELECT 1 FROM model_versions WHERE name = ?", (name,)).fetchone()
        elif ref.isdigit():
            sql = "SELECT 1 FROM model_versions WHERE name = ? AND version = ?"
            row = con.execute(sql, (name, int(ref))).fetchone()
        else:
            sql = "SELECT 1 FROM registered_model_aliases WHERE name = ? AND alias = ?"
            row = con.execute(sql, (name, ref)).fetchone()
        return row is not None
    except sqlite3.Error:
        return False  # not an MLflow store (or an unreadable one)
    finally:
        con.close()


def model_problem(kind: str, uri: str | None, store: str | None = None) -> str | None:
    """One line on why the `kind` model cannot be found, or None when it can (or cannot be told
    without contacting a tracking server).

    Args:
        kind: "classifier" or "segmenter".
        uri: `--classifier`/`--segmenter` as given; None = the registered champion.
        store: tracking URI (default: `local_store_uri()`).
    """
    uri = uri or DEFAULT_MODELS[kind]
    if not uri.startswith(("models:/", "runs:/")):
        if not Path(uri).is_file():
            return f"{kind} model file {uri} not found; {_FIX[kind]}"
        return None
    store = store or local_store_uri()
    if not uri.startswith("models:/") or not store.startswith("sqlite:///"):
        return None  # a run artifact or a server: MLflow checks it when it loads the model
    db = Path(store.removeprefix("sqlite:///"))
    name, sep, ref = uri.removeprefix("models:/").partition("@")
    if not sep:
        name, _, ref = name.partition("/")
    if not db.is_file():
        return f"{kind} model {uri}: no MLflow store at {db}; {_FIX[kind]}"
    if not _registered(db, name, ref):
        where = f"alias @{ref}" if sep else f"version {ref or '(any)'}"
        return f"{kind} model {uri}: the store {db} has no {name} {where}; {_FIX[kind]}"
    return None


def archive_problem(archive: str) -> str | None:
    """One line when the archive folder (or NIfTI/DICOM file) does not exist."""
    if Path(archive).exists():
        return None
    return f"archive {archive} not found; give the folder holding the patients' scans"


def timezone_problem(name: str | None) -> str | None:
    """One line when `--timezone` is not an IANA time zone name (None: not given)."""
    if name is None:
        return None
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"--timezone {name!r} is not a time zone name; use e.g. UTC or Europe/Berlin"
    return None


def triage_problem(
    archive: str, out: str | None, classifier: str | None, segmenter: str | None
) -> str | None:
    """The first reason `mri-triage triage`/`serve` cannot start, as one line, or None."""
    if not Path(archive).is_dir():
        return f"archive folder {archive} not found; give the folder holding the patients' scans"
    if out is not None:
        from pipeline.io.safety import UnsafeOutputError, check_out_dir
        from pipeline.triage.preflight import CannotRunError, check_out_writable

        try:
            check_out_writable(check_out_dir(archive, out))
        except (CannotRunError, UnsafeOutputError, ValueError) as exc:
            return str(exc)
    for kind, uri in (("classifier", classifier), ("segmenter", segmenter)):
        problem = model_problem(kind, uri)
        if problem:
            return problem
    return None
