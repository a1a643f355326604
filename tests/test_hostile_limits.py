"""Size bombs under a memory limit, one validation rule for index and loader, and the pure rules
that keep keys and reasons safe (no Prefect, no models)."""

from __future__ import annotations

import csv
import gzip
import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import dicom_helpers as dh
import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.io.errors import ArchiveError
from pipeline.io.index import build_index
from pipeline.io.manifest import RUN_FILES
from pipeline.io.nifti import load_nifti_case
from pipeline.io.safety import clean_reason, csv_cell, display_text, output_name
from pipeline.io.slices import load_patient

MEMORY_LIMIT = 1536 * 2**20  # address space of the child: far below what any bomb declares


def _tif_bomb(path: Path, side: int = 60000) -> None:
    """A 64x64 zlib TIF whose header then claims `side` x `side` x 3 pixels (10 GB decoded)."""
    tifffile.imwrite(str(path), np.zeros((64, 64, 3), np.uint8), compression="zlib")
    with tifffile.TiffFile(str(path)) as tif:
        tags = tif.pages.first.tags
        where = [(tags[n].valueoffset, tags[n].dtype) for n in ("ImageWidth", "ImageLength")]
    with open(path, "r+b") as fh:
        for offset, dtype in where:
            fh.seek(offset)
            fh.write(struct.pack("<H" if int(dtype) == 3 else "<I", side))


def _nifti_header_bomb(path: Path) -> None:
    """A .nii whose header declares 3000^3 int16 voxels (54 GB) followed by a few bytes."""
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    img.header.set_data_shape((3000, 3000, 3000))
    path.write_bytes(img.header.binaryblock + b"\0" * 4 + b"\0" * 1024)


def _gzip_bomb(path: Path, shape: tuple[int, int, int] = (640, 640, 400)) -> None:
    """A real .nii.gz of zeros: ~0.3 MB on disk, 328 MB decompressed (over the voxel limit)."""
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.diag([0.9, 0.9, 3, 1]))
    img.header.set_data_shape(shape)
    zero = bytes(1 << 24)
    total = int(np.prod(shape)) * 2
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(img.header.binaryblock + b"\0" * 4)
        for start in range(0, total, len(zero)):
            fh.write(zero[: min(len(zero), total - start)])


def _wide_patient(folder: Path, slices: int = 10, side: int = 4096) -> None:
    """A Kaggle patient of `slices` slices of `side` x `side` pixels: each slice within the slice
    limit, together 1920 MiB once decoded (over the per-patient limit and the child's memory)."""
    folder.mkdir(parents=True)
    row = (np.arange(side) % 251).astype(np.uint8)
    image = np.ascontiguousarray(np.broadcast_to(row[None, :, None], (side, side, 3)))
    for k in range(1, slices + 1):
        tifffile.imwrite(str(folder / f"{folder.name}_{k}.tif"), image, compression="zlib")


def _dicom_header_bomb(folder: Path) -> None:
    """A real 3-slice FLAIR series whose headers then all claim 60000 x 60000 pixels."""
    stored, affine = dh.grid(dh.phantom(3, 32))
    for path in dh.write_series(folder, stored, affine):
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 60000
        ds.save_as(path)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _limit_data() -> None:
    # The data segment, not the address space: TensorFlow reserves address space it never uses.
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))


def _bomb_archive(tmp_path: Path) -> Path:
    """A good two-slice patient beside a TIF header bomb, a NIfTI header bomb and a gzip bomb."""
    archive = tmp_path / "archive"
    good = archive / "GOOD"
    good.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in (1, 2):
        tifffile.imwrite(str(good / f"GOOD_{k}.tif"), rng.integers(0, 255, (64, 64, 3), np.uint8))
    (archive / "TIFBOMB").mkdir()
    _tif_bomb(archive / "TIFBOMB" / "TIFBOMB_1.tif")
    _nifti_header_bomb(archive / "HDRBOMB.nii")
    _gzip_bomb(archive / "GZBOMB.nii.gz")
    return archive


def test_size_bombs_are_refused_from_headers_under_a_memory_limit(tmp_path: Path) -> None:
    archive = _bomb_archive(tmp_path)
    code = textwrap.dedent(
        f"""
        import resource, sys
        from pipeline.io.errors import ArchiveError
        from pipeline.io.index import build_index
        from pipeline.io.slices import read_tif
        from pipeline.io.nifti import load_nifti_case
        index = build_index({str(archive)!r})
        print("patients", sorted(index.table["patient"].unique()))
        for e in index.errors:
            print("error", e["patient"], e["reason"])
        for load, path in ((read_tif, "TIFBOMB/TIFBOMB_1.tif"), (load_nifti_case, "GZBOMB.nii.gz")):
            try:
                load({str(archive)!r} + "/" + path)
            except ArchiveError as exc:
                print("loader", exc.reason)
        print("peak_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
        """
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        preexec_fn=_limit_memory, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    print("\n".join(lines))
    assert lines[0] == "patients ['GOOD']"
    errors = {ln.split()[1]: ln for ln in lines if ln.startswith("error")}
    assert "exceeds the limit" in errors["TIFBOMB"]
    assert "over the limit" in errors["HDRBOMB"] and "over the limit" in errors["GZBOMB"]
    loader = [ln for ln in lines if ln.startswith("loader")]
    assert len(loader) == 2 and all("limit" in ln for ln in loader)


@pytest.mark.slow
def test_a_run_over_size_bombs_fails_each_with_its_reason_under_a_memory_limit(
    tmp_path: Path,
) -> None:
    """The whole run in a child whose data segment is capped: every bomb (header bombs, a gzip
    bomb, a DICOM series claiming huge frames, a patient of many large slices) is a failed
    patient naming the limit, the good patient is triaged, and the process never runs out."""
    archive = _bomb_archive(tmp_path)
    _wide_patient(archive / "WIDE")
    _dicom_header_bomb(archive / "dicom")
    code = textwrap.dedent(
        f"""
        import json, resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import triage_helpers as th
        from pipeline.io.index import build_index
        from pipeline.io.slices import load_patient
        from pipeline.io.quality import Limits
        from pipeline.triage.run import RunOptions, run_triage, serial_map
        clf = th.save(th.bright_classifier(), {str(tmp_path / "c.keras")!r}, "classifier")
        seg = th.save(th.bright_segmenter(), {str(tmp_path / "s.keras")!r}, "segmenter")
        options = RunOptions(clf, seg, threshold=0.5, track=False, runtime="tf")
        result = run_triage({str(archive)!r}, {str(tmp_path / "out")!r}, options, serial_map)
        # The loader's own check, for rows an index with a generous limit let through.
        loose = build_index({str(archive)!r}, limits=Limits(max_patient_mb=10**6)).table
        try:
            load_patient(loose[loose["patient"] == "WIDE"])
            loader = "loaded"
        except Exception as exc:
            loader = f"{{type(exc).__name__}}: {{exc}}"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(json.dumps({{"exit": result.exit_code, "loader": loader, "peak_mb": peak}}))
        """
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env["MRI_TRIAGE_SALT"] = dh.SALT
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
        preexec_fn=_limit_data, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.splitlines()[-1])
    print(outcome)
    assert outcome["exit"] == 1  # some patients failed; the run itself finished
    assert outcome["loader"].startswith("InputQualityError: ")
    assert "MiB per patient" in outcome["loader"]
    with (tmp_path / "out" / "summary.csv").open(newline="", encoding="utf-8") as fh:
        rows = {r["patient"]: r for r in csv.DictReader(fh)}
    assert rows["GOOD"]["status"] == "done"
    (dicom,) = [k for k in rows if k not in ("GOOD", "TIFBOMB", "HDRBOMB", "GZBOMB", "WIDE")]
    for patient in ("TIFBOMB", "HDRBOMB", "GZBOMB", "WIDE", dicom):
        assert rows[patient]["status"] == "failed", rows[patient]
        assert "limit" in rows[patient]["reason"], rows[patient]
    assert "1920 MiB decoded" in rows["WIDE"]["reason"]
    assert "60000x60000" in rows[dicom]["reason"]


def _case(folder: Path, t1_shift: float, seg: bool = True) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    flair = rng.integers(1, 500, (32, 32, 4)).astype(np.int16)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = [-14.0, -14.0, -6.0]
    nib.Nifti1Image(flair, affine).to_filename(str(folder / f"{folder.name}_flair.nii.gz"))
    moved = affine.copy()
    moved[0, 3] += t1_shift
    nib.Nifti1Image(flair, moved).to_filename(str(folder / f"{folder.name}_t1.nii.gz"))
    if seg:
        mask = (flair > 450).astype(np.uint8)
        nib.Nifti1Image(mask, affine).to_filename(str(folder / f"{folder.name}_seg.nii.gz"))
    return folder


def _loads(folder: Path) -> bool:
    try:
        load_nifti_case(folder)
    except ArchiveError:
        return False
    return True


def test_t1_shifted_by_005_mm_is_treated_alike_by_index_and_loader(tmp_path: Path) -> None:
    case = _case(tmp_path / "arch" / "P1", 0.05)
    index = build_index(tmp_path / "arch")
    assert index.table.empty and not _loads(case)
    assert [e["patient"] for e in index.errors] == ["P1"]
    assert "affine differs" in index.errors[0]["reason"]


@settings(max_examples=20, deadline=None)
@given(shift=st.sampled_from([0.0, 1e-5, 5e-4, 9e-4, 1.1e-3, 0.01, 0.05, 0.5]))
def test_whatever_the_index_accepts_the_loader_loads(tmp_path_factory, shift: float) -> None:
    root = tmp_path_factory.mktemp("prop")
    case = _case(root / "P1", shift)
    index = build_index(root)
    accepted = not index.table.empty
    assert accepted == _loads(case), (shift, index.errors)
    if accepted:
        assert len(load_patient(index.table).slices) == len(index.table)


KEYS = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("/.\\\x00\x1b:"),
    max_size=40,
) | st.sampled_from([*sorted(RUN_FILES), ".", "..", "-x", "P\udcff"])


@given(a=KEYS, b=KEYS)
def test_output_names_are_plain_distinct_folder_names(a: str, b: str) -> None:
    na = output_name(a)
    assert na and "/" not in na and "\0" not in na and not na.startswith((".", "-"))
    assert na.lower() not in RUN_FILES and len(na) < 120
    assert na.isascii()
    if a != b:
        assert na != output_name(b)


def test_display_and_csv_and_reasons() -> None:
    assert display_text("P\udcff\x1bx") == "P\\xff\\u001bx"
    assert csv_cell("=1+1") == "'=1+1" and csv_cell("-2") == "'-2" and csv_cell(-2.5) == -2.5
    array_error = ValueError(f"bad pixels {np.arange(400).reshape(20, 20)}")
    reason = clean_reason(array_error)
    assert "[…]" in reason and "399" not in reason and len(reason) <= 300
    assert "\n" not in clean_reason(RuntimeError("two\nlines"))
