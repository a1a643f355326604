"""Manifest, atomic writes and the output-folder lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.io.manifest import (
    JOURNAL_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    OutputLockedError,
    OutputStateError,
    atomic_write_text,
    clean_staging,
    commit_dir,
    compact_manifest,
    files_digest,
    is_done,
    load_manifest,
    output_hashes,
    output_lock,
    record_patient,
    run_key,
    staging_dir,
)


def test_lock_is_exclusive_within_a_process(tmp_path: Path) -> None:
    with (
        output_lock(tmp_path),
        pytest.raises(OutputLockedError, match="another triage run"),
        output_lock(tmp_path),
    ):
        pass
    with output_lock(tmp_path):  # released on exit
        assert (tmp_path / LOCK_NAME).exists()


def test_lock_blocks_another_process(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from pipeline.io.manifest import output_lock, OutputLockedError
        try:
            with output_lock(Path({str(tmp_path)!r})):
                sys.exit(0)
        except OutputLockedError:
            sys.exit(3)
        """
    )
    with output_lock(tmp_path):
        held = subprocess.run([sys.executable, "-c", code], check=False)
    free = subprocess.run([sys.executable, "-c", code], check=False)
    assert held.returncode == 3
    assert free.returncode == 0


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_commit_dir_replaces_old_folder(tmp_path: Path) -> None:
    final = tmp_path / "P1"
    final.mkdir()
    (final / "old.txt").write_text("old")
    (final / "report.json").write_text("{}")  # an earlier output of a run: replaced
    stage = staging_dir(tmp_path, "P1")
    (stage / "report.json").write_text("{}")
    commit_dir(stage, final)
    assert sorted(p.name for p in final.iterdir()) == ["report.json"]
    assert not stage.exists()
    leftover = staging_dir(tmp_path, "P2")
    clean_staging(tmp_path)
    assert not leftover.exists()


def test_digest_and_key_change_with_inputs(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    a.write_bytes(b"1234")
    b.write_bytes(b"5678")
    d1 = files_digest([a, b])
    assert files_digest([a, b]) == d1
    b.write_bytes(b"5679")
    d2 = files_digest([a, b])
    assert d2 != d1
    models = {"classifier": "3", "segmenter": "1"}
    settings = {"threshold": 0.99, "min_component": 10}
    k = run_key(d2, models, settings)
    assert k == run_key(d2, dict(models), dict(settings))
    assert k != run_key(d2, {**models, "classifier": "4"}, settings)
    assert k != run_key(d2, models, {**settings, "threshold": 0.9})
    assert k != run_key(d1, models, settings)


def test_manifest_round_trip_and_done(tmp_path: Path) -> None:
    assert load_manifest(tmp_path) == {}
    record_patient(tmp_path, "P1", {"key": "k1", "status": "done", "outputs": {}})
    record_patient(tmp_path, "P2", {"key": "k2", "status": "failed", "reason": "bad"})
    manifest = load_manifest(tmp_path)
    assert set(manifest) == {"P1", "P2"}
    assert not is_done(manifest, tmp_path, "P1", "k1")  # no report in place yet
    (tmp_path / "P1").mkdir()
    (tmp_path / "P1" / "report.json").write_text("{}")
    assert not is_done(manifest, tmp_path, "P1", "k1")  # no output hashes recorded: redo
    record_patient(
        tmp_path, "P1", {"key": "k1", "status": "done", "outputs": output_hashes(tmp_path / "P1")}
    )
    manifest = load_manifest(tmp_path)
    assert is_done(manifest, tmp_path, "P1", "k1")
    (tmp_path / "P1" / "report.json").write_text("{ }")  # an output changed: not done any more
    assert not is_done(manifest, tmp_path, "P1", "k1")
    (tmp_path / "P1" / "report.json").write_text("{}")
    assert not is_done(manifest, tmp_path, "P1", "other-key")
    assert not is_done(manifest, tmp_path, "P2", "k2")
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    assert set(load_manifest(tmp_path)) == {"P1", "P2"}  # the journal still holds them
    (tmp_path / JOURNAL_NAME).unlink()
    assert load_manifest(tmp_path) == {}


def test_journal_appends_then_compacts_and_survives_a_torn_line(tmp_path: Path) -> None:
    """Each finished patient is one appended line (manifest.json is not rewritten per patient);
    the run's end folds them into manifest.json; a line torn by a kill is dropped, not fatal."""
    record_patient(tmp_path, "P1", {"key": "k1", "status": "done"})
    compact_manifest(tmp_path)
    before = (tmp_path / MANIFEST_NAME).read_bytes()
    assert not (tmp_path / JOURNAL_NAME).exists()
    for i in range(2, 6):
        record_patient(tmp_path, f"P{i}", {"key": f"k{i}", "status": "done"})
    record_patient(tmp_path, "P1", {"key": "k1b", "status": "done"})  # a later line wins
    assert (tmp_path / MANIFEST_NAME).read_bytes() == before  # untouched while the run goes
    assert len((tmp_path / JOURNAL_NAME).read_bytes().splitlines()) == 5
    with open(tmp_path / JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"patient": "P9", "entry": {"key": "k9", "sta')  # killed mid-append
    manifest = load_manifest(tmp_path)
    assert set(manifest) == {"P1", "P2", "P3", "P4", "P5"} and manifest["P1"]["key"] == "k1b"
    compact_manifest(tmp_path)
    assert not (tmp_path / JOURNAL_NAME).exists()
    written = json.loads((tmp_path / MANIFEST_NAME).read_text())["patients"]
    assert set(written) == {f"P{i}" for i in range(1, 6)} and written["P1"]["key"] == "k1b"
    assert load_manifest(tmp_path) == written


def test_journal_never_writes_through_a_planted_link_or_fifo(tmp_path: Path) -> None:
    victim = tmp_path / "archive_file.tif"
    victim.write_bytes(b"patient data")
    out = tmp_path / "out"
    out.mkdir()
    (out / JOURNAL_NAME).symlink_to(victim)
    with pytest.raises(OutputStateError, match="not a file this tool wrote"):
        record_patient(out, "P1", {"key": "k", "status": "done"})
    assert victim.read_bytes() == b"patient data"
    assert load_manifest(out) == {}  # a linked journal is never read either
    compact_manifest(out)
    assert victim.read_bytes() == b"patient data" and (out / JOURNAL_NAME).is_symlink()
    (out / JOURNAL_NAME).unlink()
    os.mkfifo(out / JOURNAL_NAME)
    with pytest.raises(OutputStateError, match="not a file this tool wrote"):
        record_patient(out, "P1", {"key": "k", "status": "done"})  # fails at once, no reader


def test_commit_dir_never_replaces_what_it_did_not_write(tmp_path: Path) -> None:
    user = tmp_path / "P1"
    user.mkdir()
    (user / "notes.txt").write_text("mine")  # not a triage output (no report.json)
    stage = staging_dir(tmp_path, "P1")
    (stage / "report.json").write_text("{}")
    with pytest.raises(OutputStateError, match="not a triage output"):
        commit_dir(stage, user)
    assert (user / "notes.txt").read_text() == "mine"
    for name in ("manifest.json", ".triage.lock", "..", "."):
        with pytest.raises(OutputStateError):
            commit_dir(stage, tmp_path / name)
    assert stage.is_dir()


def test_planted_links_are_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.tif"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".triage.lock").symlink_to(victim)
    with pytest.raises(OutputStateError), output_lock(out):
        pass
    (out / ".triage.lock").unlink()
    (out / ".staging").symlink_to(tmp_path)
    with pytest.raises(OutputStateError):
        clean_staging(out)
    assert victim.read_bytes() == b"precious"
