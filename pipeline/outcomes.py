"""What a run reports per patient once the work is done: index errors folded into the records,
the manifest entry of a finished patient, and the files that are the run's own outputs.

Index errors carry the patient they belong to (`pipeline.index` records it when it finds them), so
nothing here parses paths: an error without a patient (a stray file at the archive root, a link out
of the archive) is listed as a skipped file, never as an invented patient.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.manifest import (
    INDEX_NAME,
    MANIFEST_NAME,
    SUMMARY_NAME,
    WORKLIST_NAME,
    output_hashes,
)
from pipeline.safety import output_name

_MAX_REASON = 2000


def merge_index_errors(
    records: Sequence[Mapping[str, Any]], errors: Sequence[Mapping[str, str]]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Fold index errors into the per-patient records.

    A patient that lost some files keeps its row with the reason appended; a patient with no usable
    slice at all (unreadable, all zero, too large, ...) gets a failed row of its own.

    Args:
        records: one per triaged patient (`patient`, `status`, ...).
        errors: `SliceIndex.errors` (`path`, `reason`, and `patient` when the file belongs to one).

    Returns:
        `(records, skipped)`: the records (new list) and the errors that belong to no patient.
    """
    by_patient: dict[str, list[str]] = {}
    skipped: list[dict[str, str]] = []
    for err in errors:
        if err.get("patient") is None:
            skipped.append({"path": err["path"], "reason": err["reason"]})
            continue
        by_patient.setdefault(err["patient"], []).append(
            f"{os.path.basename(err['path'])}: {err['reason']}"
        )
    out = [dict(r) for r in records]
    known = {r["patient"]: r for r in out}
    for patient, reasons in sorted(by_patient.items()):
        text = f"{len(reasons)} file(s) skipped: " + "; ".join(reasons)
        if patient in known:
            rec = known[patient]
            rec["reason"] = "; ".join(filter(None, [rec.get("reason"), text]))[:_MAX_REASON]
        else:
            out.append(
                {
                    "patient": patient,
                    "output": output_name(patient),
                    "status": "failed",
                    "reason": text[:_MAX_REASON],
                }
            )
    return out, skipped


def done_entry(out_dir: Path, record: Mapping[str, Any], models: Mapping[str, str]) -> dict:
    """The manifest entry of a patient just finished: its key, folder and output hashes."""
    folder = str(record.get("output") or output_name(str(record["patient"])))
    return {
        "key": record["key"],
        "status": "done",
        "models": dict(models),
        "folder": folder,
        "outputs": output_hashes(out_dir / folder),
    }


def own_outputs(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names in `OUT/` this run stands behind: its reports, manifest, and the folders of the
    patients it finished or found finished (never other files a user keeps there)."""
    folders = [
        str(r.get("output") or output_name(str(r["patient"])))
        for r in records
        if r.get("status") in ("done", "skipped")
    ]
    return [SUMMARY_NAME, INDEX_NAME, WORKLIST_NAME, MANIFEST_NAME, *sorted(set(folders))]
