"""What a run reports per patient once the work is done: index errors folded into the records,
the manifest entry of a finished patient, and the files that are the run's own outputs.

Index errors carry the patient they belong to (`pipeline.io.index` records it when it finds them),
so nothing here parses paths: an error without a patient (a stray file at the archive root, a link
out of the archive) is listed as a skipped file, never as an invented patient.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.io.manifest import (
    INDEX_NAME,
    MANIFEST_NAME,
    SUMMARY_NAME,
    WORKLIST_NAME,
    output_hashes,
)
from pipeline.io.safety import output_name
from pipeline.triage.records import FAILED, PatientResult

_MAX_REASON = 2000


def merge_index_errors(
    results: Sequence[PatientResult], errors: Sequence[Mapping[str, str]]
) -> tuple[list[PatientResult], list[dict[str, str]]]:
    """Fold index errors into the per-patient results.

    A patient that lost some files keeps its row with the reason appended; a patient with no usable
    slice at all (unreadable, all zero, too large, ...) gets a failed row of its own.

    Args:
        results: one per triaged patient.
        errors: `SliceIndex.errors` (`path`, `reason`, and `patient` when the file belongs to one).

    Returns:
        `(results, skipped)`: the results (new list) and the errors that belong to no patient.
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
    out = list(results)
    where = {r.patient: i for i, r in enumerate(out)}
    for patient, reasons in sorted(by_patient.items()):
        text = f"{len(reasons)} file(s) skipped: " + "; ".join(reasons)
        if patient in where:
            out[where[patient]] = out[where[patient]].with_reason(text, _MAX_REASON)
        else:
            failed = PatientResult(patient, output_name(patient), FAILED)
            out.append(failed.with_reason(text, _MAX_REASON))
    return out, skipped


def done_entry(out_dir: Path, result: PatientResult, models: Mapping[str, str]) -> dict:
    """The manifest entry (format `pipeline.io.manifest`, version 1) of a patient just finished:
    its key, folder and output hashes."""
    return {
        "key": result.key,
        "status": "done",
        "models": dict(models),
        "folder": result.output,
        "outputs": output_hashes(out_dir / result.output),
    }


def own_outputs(results: Sequence[PatientResult]) -> list[str]:
    """Names in `OUT/` this run stands behind: its reports, manifest, and the folders of the
    patients it finished or found finished (never other files a user keeps there)."""
    folders = {r.output for r in results if r.ok}
    return [SUMMARY_NAME, INDEX_NAME, WORKLIST_NAME, MANIFEST_NAME, *sorted(folders)]
