"""The hostile-input corpus (tests/hostile_corpus.py) through a real triage run (Prefect, Keras).

One archive holds every class of bad input beside good patients. The run must name each bad input
with a clear reason, screen the rest, never change a byte of the archive or write outside `--out`,
keep its own files (lock, manifest, reports) intact whatever the patient keys, escape every user
string in HTML and neutralise it in CSV, and run again on the same output.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import triage_helpers as th
from hostile_corpus import Case, build_corpus, snapshot

from flows.triage import triage_flow
from pipeline.io.manifest import INDEX_NAME, LOCK_NAME, MANIFEST_NAME, RUN_FILES, SUMMARY_NAME
from pipeline.io.safety import csv_cell, display_text, output_name

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    models = tmp_path_factory.mktemp("models")
    clf = th.save(th.bright_classifier(), models / "c.keras", "classifier")
    seg = th.save(th.bright_segmenter(), models / "s.keras", "segmenter")
    archive, cases = build_corpus(root)
    out = root / "out"
    before = snapshot(root)
    first = triage_flow(str(archive), str(out), clf, seg, threshold=0.99, track=False)
    after_first = snapshot(root, skip=out)
    second = triage_flow(str(archive), str(out), clf, seg, threshold=0.99, track=False)
    return {
        "root": root, "archive": archive, "cases": cases, "out": out, "first": first,
        "second": second, "before": before, "after_first": after_first,
        "after_second": snapshot(root, skip=out),
    }  # fmt: skip


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((out / SUMMARY_NAME).read_text(encoding="utf-8"))))


def _outcome(case: Case, rows: dict[str, dict[str, str]], page: str) -> tuple[str, str]:
    """(what the run said, its reason) for one case."""
    if case.key is None:
        hit = next((ln for ln in page.splitlines() if case.reason and case.reason in ln), "")
        return ("skipped" if hit else "missing"), hit
    row = rows.get(str(csv_cell(display_text(case.key))))
    return (row["status"], row["reason"]) if row else ("missing", "")


def test_every_case_is_reported_as_expected(run: dict) -> None:
    rows = {r["patient"]: r for r in _rows(run["out"])}
    page = (run["out"] / INDEX_NAME).read_text(encoding="utf-8")
    table, wrong = [], []
    for case in run["cases"]:
        got, reason = _outcome(case, rows, page)
        screened = case.expect == "done" and got in ("done", "skipped")  # 2nd run: skipped
        ok = (got == case.expect or screened) and case.reason in reason
        if case.key is not None and case.expect == "failed":
            ok = ok and rows[str(csv_cell(display_text(case.key)))]["tumour_found"] == ""
        table.append(
            f"| {case.cls} | {case.name!r} | {case.expect} | {got} | {'ok' if ok else 'WRONG'} |"
        )
        if not ok:
            wrong.append((case, got, reason))
    print(
        "\n| class | variant | expected | run said | |\n|---|---|---|---|---|\n" + "\n".join(table)
    )
    assert not wrong, wrong
    # Exit status 1 (failures and skipped files), every screened patient has its report.
    assert run["first"]["exit_code"] == 1
    for case in run["cases"]:
        if case.expect == "done":
            assert (run["out"] / output_name(case.key) / "report.json").is_file(), case


def test_archive_unchanged_and_nothing_written_outside_out(run: dict) -> None:
    assert run["after_first"] == run["before"]
    assert run["after_second"] == run["before"]


def test_run_files_stay_what_they_are(run: dict) -> None:
    out = run["out"]
    for name in (LOCK_NAME, MANIFEST_NAME, SUMMARY_NAME, INDEX_NAME):
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    allowed = {output_name(c.key) for c in run["cases"] if c.key is not None}
    for entry in out.iterdir():
        name = entry.name
        assert name.lower() in RUN_FILES or name in allowed, name
        if name.lower() not in RUN_FILES:
            assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name), name
            assert entry.is_dir() and (entry / "report.json").is_file()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    done = [c.key for c in run["cases"] if c.expect == "done"]
    assert set(done) <= set(manifest["patients"])  # keys kept as data (JSON-escaped)
    for key in done:
        rep = json.loads((out / output_name(key) / "report.json").read_text())
        assert rep["patient"] == key and rep["output"] == output_name(key)


def test_pages_escape_every_user_string(run: dict) -> None:
    out = run["out"]
    pages = [(out / INDEX_NAME).read_text(encoding="utf-8")]
    pages += [p.read_text(encoding="utf-8") for p in out.glob("*/report.html")]
    for page in pages:
        assert "<img src=x" not in page and "<b onmouseover" not in page
        assert not re.search(r"(href|src)\s*=\s*['\"]?\s*javascript:", page, re.IGNORECASE)
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", page)  # no raw control chars
        for link in re.findall(r"(?:href|src)=\"([^\"]*)\"", page):
            if link.startswith("data:image/"):
                continue  # the embedded montage
            # Relative links only: a patient's safe folder, or the run's own files beside it.
            assert re.fullmatch(r"(\.\./|[A-Za-z0-9_][A-Za-z0-9._-]*/)?[A-Za-z0-9._-]+", link), link
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[0]
    assert "P\\xff\\xfe" in pages[0]  # undecodable bytes shown escaped


def test_csv_cells_never_start_a_formula(run: dict) -> None:
    for row in _rows(run["out"]):
        for column in ("patient", "status", "reason"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r")), row[column]
    keys = {r["patient"] for r in _rows(run["out"])}
    assert {"'=HYPERLINK(1)", "'+1", "'-cmd", "'@SUM(1)"} <= keys


def test_second_run_skips_what_is_done(run: dict) -> None:
    first, second = run["first"]["metrics"], run["second"]["metrics"]
    assert second["patients_done"] == 0
    assert second["patients_skipped"] == first["patients_done"] + first["patients_skipped"]
    assert second["failures"] == first["failures"] and run["second"]["exit_code"] == 1


def test_prefect_never_sees_a_patient_key(run: dict) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs()
        flow_runs = client.read_flow_runs()
        logs = client.read_logs()
    assert task_runs and logs
    blob = json.dumps(
        [[t.name, str(t.task_inputs), str(t.state_name)] for t in task_runs]
        + [[f.name, f.parameters] for f in flow_runs]
        + [log.message for log in logs],
        default=str,
    )
    keys = [c.key for c in run["cases"] if c.key and len(c.key) > 4 and c.key.isprintable()]
    assert len(keys) > 20
    assert not [k for k in keys if k in blob]
