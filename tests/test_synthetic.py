"""Synthetic archives: layouts, determinism, visible tumours, a learnable tumour/normal signal."""

from __future__ import annotations

from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
import tifffile
from sklearn.linear_model import LogisticRegression

from pipeline.io.index import build_index
from pipeline.io.slices import load_patient
from pipeline.io.synthetic import make_phantom, write_synthetic_archive


def _slices(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """All slices of an archive: images (N, H, W, 3) and masks (N, H, W)."""
    table = build_index(root).table
    images, masks = [], []
    for _, rows in table.groupby("patient"):
        ps = load_patient(rows)
        images.append(ps.images)
        masks.append(ps.masks)
    return np.concatenate(images), np.concatenate(masks)


def test_kaggle_layout(tmp_path: Path) -> None:
    root = write_synthetic_archive(tmp_path / "k", 8, "kaggle", seed=0, slices=6, image_size=32)
    patients = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert patients == [f"SYN_{i:04d}" for i in range(1, 9)]
    assert (root / "data.csv").read_text().startswith("Patient,")
    image = tifffile.imread(root / "SYN_0001" / "SYN_0001_6.tif")
    mask = tifffile.imread(root / "SYN_0001" / "SYN_0001_6_mask.tif")
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
    table = build_index(root).table
    tumour_patients = (table["tumour_pixels"] > 0).groupby(table["patient"]).any()
    assert int((~tumour_patients).sum()) == 2  # round(8 / 4) tumour-free
    assert len(table) == 48


def test_nifti_layout_geometry_and_labels(tmp_path: Path) -> None:
    root = write_synthetic_archive(tmp_path / "n", 3, "nifti", seed=0, slices=5, image_size=24)
    folder = root / "SYN_0002"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"SYN_0002_{s}.nii.gz" for s in ("flair", "seg", "t1", "t1ce", "t2")]
    flair = nib.load(folder / "SYN_0002_flair.nii.gz")
    assert flair.get_data_dtype() == np.int16
    assert nib.aff2axcodes(flair.affine) == ("L", "P", "S")
    assert sorted(np.round(flair.header.get_zooms(), 3)) == [0.9, 0.9, 3.0]
    permuted = nib.load(root / "SYN_0003" / "SYN_0003_flair.nii.gz")
    assert nib.aff2axcodes(permuted.affine) == ("P", "S", "R") and permuted.shape == (24, 5, 24)
    labels = set(np.unique(np.asanyarray(nib.load(folder / "SYN_0002_seg.nii.gz").dataobj)))
    assert labels <= {0, 1, 2, 4} and len(labels) > 1


def test_same_seed_same_archive_other_seed_differs(tmp_path: Path) -> None:
    args = {"patients": 2, "fmt": "kaggle", "slices": 3, "image_size": 16}
    a = write_synthetic_archive(tmp_path / "a", seed=5, **args)
    b = write_synthetic_archive(tmp_path / "b", seed=5, **args)
    c = write_synthetic_archive(tmp_path / "c", seed=6, **args)
    name = "SYN_0001/SYN_0001_2.tif"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine\n")
    with pytest.raises(FileExistsError):
        write_synthetic_archive(tmp_path / "x", 1, "kaggle", seed=0, slices=2, image_size=16)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine\n"
    with pytest.raises(ValueError, match="fmt"):
        write_synthetic_archive(tmp_path / "y", 1, "dicom", seed=0)


def test_tumour_is_flair_bright_and_t1_dark() -> None:
    phantom = make_phantom(np.random.default_rng(1), 12, 64, tumour=True, enhancing=False)
    t1, flair = phantom.channels[0], phantom.channels[1]
    tumour = phantom.labels > 0
    brain = (flair > 0.2) & ~tumour
    assert tumour.sum() > 50
    assert flair[tumour].mean() > flair[brain].mean() + 0.25
    assert t1[tumour].mean() < t1[brain].mean()
    free = make_phantom(np.random.default_rng(1), 12, 64, tumour=False, enhancing=False)
    assert not free.labels.any()


def test_a_simple_classifier_learns_tumour_vs_normal(tmp_path: Path) -> None:
    """Bright-FLAIR-blob features of one seed's slices predict tumour slices of another seed's."""
    kwargs = {"patients": 8, "fmt": "kaggle", "slices": 12, "image_size": 64}
    train_x, train_m = _slices(write_synthetic_archive(tmp_path / "tr", seed=0, **kwargs))
    test_x, test_m = _slices(write_synthetic_archive(tmp_path / "te", seed=1, **kwargs))

    def features(images: np.ndarray) -> np.ndarray:
        rows = []
        for flair in images[..., 1]:
            smooth = cv2.blur(flair, (3, 3))
            brain = flair[flair > 0.15]
            ratio = smooth / (np.median(brain) if brain.size else 1.0)
            rows.append([np.log1p((ratio > t).sum()) for t in (1.3, 1.5, 1.7, 1.9)])
        return np.array(rows)

    def labels(masks: np.ndarray) -> np.ndarray:
        return (masks.sum(axis=(1, 2)) >= 10).astype(int)  # ignore specks at a tumour's tips

    y_train, y_test = labels(train_m), labels(test_m)
    assert 0.15 < y_train.mean() < 0.6 and 0.15 < y_test.mean() < 0.6
    model = LogisticRegression(max_iter=2000).fit(features(train_x), y_train)
    accuracy = float((model.predict(features(test_x)) == y_test).mean())
    assert accuracy > 0.9, accuracy


def test_prefix_names_the_patients(tmp_path: Path) -> None:
    write_synthetic_archive(
        tmp_path / "a", 2, "kaggle", seed=3, slices=2, image_size=32, prefix="NIGHT"
    )
    table = build_index(tmp_path / "a").table
    assert sorted(table["patient"].unique()) == ["NIGHT_0001", "NIGHT_0002"]
    assert (tmp_path / "a" / "NIGHT_0001" / "NIGHT_0001_1.tif").exists()
