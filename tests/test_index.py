"""The slice index: real archives, numeric order, every bad-input case, splits, fingerprint."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import tifffile

from pipeline.io.index import (
    COLUMNS,
    build_index,
    check_no_leakage,
    fingerprint,
    index_summary,
    split_patients,
)
from pipeline.io.slices import load_patient
from pipeline.io.synthetic import write_synthetic_archive


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, size and mtime (ns) of every file under root, symlinks not followed."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path)] = (digest, stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def kaggle_index(kaggle_3m: Path):
    return build_index(kaggle_3m)


def test_shared_kaggle_3m_counts(kaggle_index) -> None:
    table = kaggle_index.table
    assert kaggle_index.errors == []
    assert list(table.columns) == COLUMNS
    assert table["patient"].nunique() == 11
    assert len(table) == 259
    assert int((table["tumour_pixels"] > 0).sum()) == 93
    assert table["has_mask"].all() and (table["format"] == "kaggle").all()
    per_patient = table.groupby("patient")["slice"].agg(["size", "min", "max"])
    assert (per_patient["min"] == 1).all() and (per_patient["max"] == per_patient["size"]).all()
    tumour = (table["tumour_pixels"] > 0).groupby(table["patient"]).sum()
    assert tumour["TCGA_HT_7694_19950404"] == 14 and tumour["TCGA_CS_5395_19981004"] == 3
    assert table["spacing_x"].isna().all() and (table["height"] == 256).all()
    summary = index_summary(kaggle_index)
    assert (summary["patients"], summary["slices"], summary["tumour_slices"]) == (11, 259, 93)
    assert summary["normal_slices"] == 259 - 93 and summary["errors"] == []


def test_slices_sorted_numerically(tmp_path: Path) -> None:
    root = write_synthetic_archive(tmp_path / "a", 1, "kaggle", seed=0, slices=12, image_size=16)
    table = build_index(root).table
    assert table["slice"].tolist() == list(range(1, 13))
    assert [Path(p).name for p in table["image_path"]][8:11] == [
        "SYN_0001_9.tif",
        "SYN_0001_10.tif",
        "SYN_0001_11.tif",
    ]


def test_shared_nifti_cases(nifti_dir: Path) -> None:
    index = build_index(nifti_dir)
    table = index.table
    assert set(table["patient"]) == {
        "brats_2013_pat0001_1",
        "brats_2013_pat0002_1",
        "BraTS-GLI-00001-000",
        "anatomical",
        "someones_anatomy",
    }
    assert [(Path(e["path"]).name, e["reason"]) for e in index.errors] == [
        ("example4d.nii.gz", "4-D volume (128, 96, 24, 2), expected 3-D")
    ]
    case = table[table["patient"] == "brats_2013_pat0001_1"]
    assert len(case) == 155 and case["has_mask"].all()
    ot = nib.as_closest_canonical(
        nib.load(nifti_dir / "deepmedic_brats2015" / "brats_2013_pat0001_1" / "OTMultiClass.nii.gz")
    )
    per_slice = (np.asanyarray(ot.dataobj) > 0).sum(axis=(0, 1))
    assert case["tumour_pixels"].tolist() == per_slice.tolist()
    assert not table[table["patient"] == "BraTS-GLI-00001-000"]["has_mask"].any()
    big = table[table["patient"] == "anatomical"]
    assert len(big) == 25 and (big["spacing_z"] == 2.0).all()
    assert (big["height"].iloc[0], big["width"].iloc[0]) == (33, 41)


def _break_archive(root: Path, outside: Path) -> dict[str, str]:
    """Plant each bad-input case; returns {path relative to root: expected reason fragment}."""
    p1, p2, p3 = (root / f"SYN_000{i}" for i in (1, 2, 3))
    (p1 / "SYN_0001_2.tif").write_bytes(b"II*\x00garbage that is no image")
    data = (p1 / "SYN_0001_3.tif").read_bytes()
    (p1 / "SYN_0001_3.tif").write_bytes(data[: len(data) // 2])
    (p2 / "SYN_0002_1_mask.tif").unlink()
    tifffile.imwrite(p2 / "SYN_0002_2_mask.tif", np.zeros((8, 8), np.uint8))
    (p3 / "notes.txt").write_text("scanner notes\n")
    (root / "EMPTY_PATIENT").mkdir()
    (outside / "secret.tif").write_bytes(b"outside")
    os.symlink(outside / "secret.tif", p3 / "SYN_0003_99.tif")
    os.symlink(outside, root / "LINKED_PATIENT")
    nii = root / "NII_CASES"
    nii.mkdir()
    vol = np.arange(16 * 16 * 4, dtype=np.int16).reshape(16, 16, 4)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), nii / "good.nii.gz")
    raw = (nii / "good.nii.gz").read_bytes()
    (nii / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    (nii / "junk.nii").write_bytes(b"\x00" * 100)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.int16), np.eye(4)), nii / "fourd.nii.gz")
    return {
        "SYN_0001/SYN_0001_2.tif": "unreadable TIF",
        "SYN_0001/SYN_0001_3.tif": "truncated",
        "SYN_0002/SYN_0002_1.tif": "mask missing",
        "SYN_0002/SYN_0002_2_mask.tif": "mask is 8x8 but its image is 16x16",
        "SYN_0003/notes.txt": "unexpected file",
        "SYN_0003/SYN_0003_99.tif": "outside the archive",
        "LINKED_PATIENT": "outside the archive",
        "EMPTY_PATIENT": "empty patient folder",
        "NII_CASES/cut.nii.gz": "corrupt or truncated NIfTI",
        "NII_CASES/junk.nii": "unreadable NIfTI header",
        "NII_CASES/fourd.nii.gz": "4-D volume",
    }


@pytest.fixture()
def broken_archive(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = write_synthetic_archive(tmp_path / "arc", 3, "kaggle", seed=1, slices=4, image_size=16)
    outside = tmp_path / "outside"
    outside.mkdir()
    return root, _break_archive(root, outside)


def test_every_bad_input_is_reported_and_the_rest_indexed(broken_archive) -> None:
    root, expected = broken_archive
    before = _snapshot(root)
    index = build_index(root)
    got = {os.path.relpath(e["path"], root): e["reason"] for e in index.errors}
    assert set(got) == set(expected), got
    for rel, fragment in expected.items():
        assert fragment in got[rel], (rel, got[rel])
    table = index.table
    counts = table.groupby("patient").size().to_dict()
    assert counts == {"SYN_0001": 2, "SYN_0002": 4, "SYN_0003": 4, "good": 4}
    labelled = table.set_index(["patient", "slice"])["has_mask"]
    assert not labelled[("SYN_0002", 1)] and not labelled[("SYN_0002", 2)]
    assert labelled[("SYN_0002", 3)] and labelled[("SYN_0001", 1)]
    assert not any("secret" in p or "outside" in p for p in table["image_path"])
    for patient, rows in table.groupby("patient"):  # everything indexed loads
        ps = load_patient(rows)
        assert len(ps.slices) == len(rows), patient
    assert _snapshot(root) == before  # nothing in the archive was modified


def test_missing_mask_slice_is_unlabelled_not_normal(broken_archive) -> None:
    root, _ = broken_archive
    rows = build_index(root).table.query("patient == 'SYN_0002'")
    ps = load_patient(rows)
    assert ps.has_mask.tolist() == [False, False, True, True]
    assert ps.masks is not None and ps.masks.shape == (4, 16, 16)


def test_archive_without_images_reports_it(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here\n")
    index = build_index(tmp_path)
    assert index.table.empty and list(index.table.columns) == COLUMNS
    assert [e["reason"] for e in index.errors] == ["no MRI images (TIF, NIfTI or DICOM) found"]


def _table(tumour_by_patient: dict[str, list[int]]) -> pd.DataFrame:
    rows = [
        {"patient": p, "slice": k + 1, "tumour_pixels": t, "has_mask": True}
        for p, values in tumour_by_patient.items()
        for k, t in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_split_is_seeded_stratified_and_leak_free(kaggle_index) -> None:
    table = kaggle_index.table
    splits = split_patients(table, seed=0)
    assert split_patients(table, seed=0) == splits
    check_no_leakage(splits)
    members = [p for name in ("train", "val", "test") for p in splits[name]]
    assert sorted(members) == sorted(table["patient"].unique())
    for name in ("train", "val", "test"):
        part = table[table["patient"].isin(splits[name])]
        assert (part["tumour_pixels"] > 0).any(), name
    seeds = {tuple(split_patients(table, seed=s)["test"]) for s in range(6)}
    assert len(seeds) > 1  # the seed matters


def test_split_spreads_tumour_and_normal_patients() -> None:
    table = _table({f"T{i}": [0, 5, 9] for i in range(6)} | {f"N{i}": [0, 0] for i in range(4)})
    splits = split_patients(table, val=0.2, test=0.2, seed=3)
    for name in ("train", "val", "test"):
        assert any(p.startswith("T") for p in splits[name]), (name, splits)
    assert sum(len(v) for v in splits.values()) == 10
    assert len(splits["train"]) >= 5


def test_split_needs_three_patients_and_sane_fractions() -> None:
    with pytest.raises(ValueError, match="at least 3 patients"):
        split_patients(_table({"A": [1], "B": [0]}))
    with pytest.raises(ValueError, match="val"):
        split_patients(_table({"A": [1], "B": [1], "C": [1]}), val=0.6, test=0.5)
    three = split_patients(_table({"A": [1], "B": [1], "C": [1]}))
    assert sorted(len(v) for v in three.values()) == [1, 1, 1]


def test_check_no_leakage_raises_on_overlap() -> None:
    with pytest.raises(ValueError, match="leakage"):
        check_no_leakage({"train": ["A", "B"], "val": ["C"], "test": ["B"]})
    check_no_leakage({"train": ["A"], "val": ["B"], "test": ["C"]})


def test_fingerprint_is_location_free_and_content_sensitive(tmp_path: Path) -> None:
    root = write_synthetic_archive(tmp_path / "a", 3, "kaggle", seed=2, slices=3, image_size=16)
    first = fingerprint(build_index(root).table)
    moved = shutil.copytree(root, tmp_path / "elsewhere" / "b")
    assert fingerprint(build_index(moved).table) == first
    mask = moved / "SYN_0002" / "SYN_0002_2_mask.tif"
    pixels = tifffile.imread(mask)
    pixels[:4, :4] = 255 - pixels[:4, :4]
    tifffile.imwrite(mask, pixels)
    assert fingerprint(build_index(moved).table) != first
    assert "SYN_0002" not in first
