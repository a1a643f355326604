"""Readers and writers: Kaggle TIFs, NIfTI reorientation and exact write-back, bad files."""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from pipeline.io import slices as slices_module
from pipeline.io.index import build_index
from pipeline.io.nifti import sequence_role, write_nifti_mask
from pipeline.io.slices import (
    ArchiveError,
    load_nifti_case,
    load_patient,
    mask_tif_bytes,
    read_tif,
    write_tif_mask,
)
from pipeline.io.synthetic import write_synthetic_archive

KAGGLE_PATIENT = "TCGA_CS_4941_19960909"  # 23 slices, 8 with tumour (PROVENANCE.md)


@pytest.fixture(scope="module")
def nifti_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic NIfTI patients stored RAS, LPS and PSR (6 slices of 32 px)."""
    out = tmp_path_factory.mktemp("syn") / "nifti"
    return write_synthetic_archive(out, patients=3, fmt="nifti", seed=3, slices=6, image_size=32)


def _rows(root: Path, patient: str | None = None):
    table = build_index(root).table
    return table[table["patient"] == (patient or table["patient"].iloc[0])]


def test_read_tif_keeps_rgb_order(tmp_path: Path) -> None:
    img = np.zeros((4, 5, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30
    tifffile.imwrite(tmp_path / "x.tif", img, photometric="rgb")
    assert read_tif(tmp_path / "x.tif")[0, 0].tolist() == [10, 20, 30]


def test_read_tif_rejects_garbage_and_truncation(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ArchiveError, match="unreadable TIF"):
        read_tif(tmp_path / "bad.tif")
    tifffile.imwrite(tmp_path / "ok.tif", np.ones((64, 64, 3), np.uint8), photometric="rgb")
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="truncated") as info:
        read_tif(tmp_path / "cut.tif")
    assert info.value.path.endswith("cut.tif")


def _tif(path: Path, pixels: np.ndarray, **kw: object) -> Path:
    rgb = pixels.ndim == 3
    tifffile.imwrite(path, pixels, photometric="rgb" if rgb else "minisblack", **kw)
    return path


def test_tifs_laid_out_like_one_already_read_skip_the_tag_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose bytes outside its strips equal those of a file tifffile decoded here is read
    from its strips; any other file (a tag differs, garbage of the same size) goes to tifffile."""
    from pipeline.io.quality import InputQualityError, Limits

    monkeypatch.setattr(slices_module, "_TIF_LAYOUTS_SEEN", {})
    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 256, (40, 24, 3), dtype=np.uint8) for _ in range(2))
    kw = {"rowsperstrip": 7, "software": "exporter A"}  # 6 strips, the last one short
    a = _tif(tmp_path / "a.tif", first, **kw)
    b = _tif(tmp_path / "b.tif", second, **kw)
    other = _tif(tmp_path / "c.tif", second, **{**kw, "software": "exporter B"})
    assert a.stat().st_size == b.stat().st_size == other.stat().st_size
    np.testing.assert_array_equal(read_tif(a), first)  # tifffile reads it; its layout is kept
    parsed = []
    real = tifffile.TiffFile

    def counting(*args: object, **kw: object) -> object:
        parsed.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(tifffile, "TiffFile", counting)
    got = read_tif(b)
    np.testing.assert_array_equal(got, second)
    assert parsed == [] and got.flags.writeable  # from the strips, and the caller may write
    np.testing.assert_array_equal(read_tif(other), second)
    assert parsed == [str(other)]  # another tag: tifffile read it
    with pytest.raises(InputQualityError, match="exceeds"):
        read_tif(b, Limits(max_slice_pixels=100))  # the limits hold on the fast path too
    size = b.stat().st_size
    (tmp_path / "junk.tif").write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    with pytest.raises(ArchiveError, match="unreadable TIF"):
        read_tif(tmp_path / "junk.tif")  # same size, other bytes: tifffile, which refuses it
    mask = (rng.random((40, 24)) > 0.5).astype(np.uint8) * 255
    m1, m2 = _tif(tmp_path / "m1.tif", mask), _tif(tmp_path / "m2.tif", 255 - mask)
    np.testing.assert_array_equal(read_tif(m1), mask)
    np.testing.assert_array_equal(read_tif(m2), 255 - mask)
    assert str(m2) not in parsed


def test_kaggle_slices_read_through_their_layout_equal_tifffile(
    kaggle_3m: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slices_module, "_TIF_LAYOUTS_SEEN", {})
    files = sorted((kaggle_3m / KAGGLE_PATIENT).glob("*.tif"))
    for path in files:
        np.testing.assert_array_equal(read_tif(path), tifffile.imread(path))
    sizes = slices_module._TIF_LAYOUTS_SEEN
    assert sizes and all(len(v) == 1 for v in sizes.values())  # one exporter, one layout a kind
    for path in files:  # read again, all through the layouts
        assert slices_module._planned(path, slices_module.DEFAULT_LIMITS) is not None


def test_load_kaggle_patient_from_shared_data(kaggle_3m: Path, tmp_path: Path) -> None:
    rows = _rows(kaggle_3m, KAGGLE_PATIENT)
    ps = load_patient(rows.sample(frac=1.0, random_state=0))  # order of rows must not matter
    assert ps.format == "kaggle" and ps.patient == KAGGLE_PATIENT
    assert ps.slices == list(range(1, 24))
    assert ps.images.shape == (23, 256, 256, 3) and ps.images.dtype == np.float32
    assert ps.images.min() >= 0.0 and ps.images.max() <= 1.0
    assert ps.masks is not None and ps.masks.dtype == bool
    assert int((ps.masks.sum(axis=(1, 2)) > 0).sum()) == 8
    assert all(np.isnan(ps.spacing))
    raw = tifffile.imread(kaggle_3m / KAGGLE_PATIENT / f"{KAGGLE_PATIENT}_10.tif")
    np.testing.assert_allclose(ps.images[9], raw / 255.0, atol=1e-6)
    # write the ground truth back as predictions: same files, same pixels
    written = ps.write_masks(ps.masks, tmp_path)
    assert [p.name for p in written][:2] == [
        f"{KAGGLE_PATIENT}_1_pred.tif",
        f"{KAGGLE_PATIENT}_2_pred.tif",
    ]
    back = tifffile.imread(written[9])
    truth = tifffile.imread(kaggle_3m / KAGGLE_PATIENT / f"{KAGGLE_PATIENT}_10_mask.tif")
    assert back.dtype == np.uint8 and back.shape == (256, 256)
    np.testing.assert_array_equal(back, truth)
    assert not list(tmp_path.glob(".tmp-*"))
    staged = ps.write_masks(ps.masks, tmp_path / "stage", staged=True)  # straight in: same bytes
    assert [p.name for p in staged] == [p.name for p in written]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(staged, written, strict=True))
    with pytest.raises(ValueError, match="pred shape"):
        ps.write_masks(ps.masks[:3], tmp_path)


@pytest.mark.parametrize("mode", ["flair", "flair25d"])
@pytest.mark.parametrize("normalize", ["none", "volume"])
def test_flair_only_load_gives_the_same_model_inputs_in_a_third_of_the_memory(
    kaggle_3m: Path, mode: str, normalize: str
) -> None:
    from pipeline.io.preprocess import PreprocessConfig, model_inputs

    rows = _rows(kaggle_3m, KAGGLE_PATIENT)
    configs = (PreprocessConfig(64, input_mode=mode, normalize=normalize),
               PreprocessConfig(128, input_mode=mode, normalize=normalize))  # fmt: skip
    whole, light = load_patient(rows), load_patient(rows, flair_only=True)
    assert light.images.shape == whole.images.shape and light.images.dtype == np.float32
    np.testing.assert_array_equal(light.images[..., 1], whole.images[..., 1])
    assert np.shares_memory(light.images[..., 0], light.images[..., 1])  # one plane, three views
    assert light.images.base.nbytes * 3 <= whole.images.nbytes + 3 * 64  # FLAIR's pixels alone
    for a, b in zip(model_inputs(whole.images, configs), model_inputs(light.images, configs),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(light.masks, whole.masks)


@pytest.mark.parametrize("flair_only", [False, True])
def test_uint8_load_gives_the_same_model_inputs_in_a_quarter_of_the_memory(
    kaggle_3m: Path, flair_only: bool
) -> None:
    from pipeline.io.preprocess import PreprocessConfig, model_inputs, unit_float

    rows = _rows(kaggle_3m, KAGGLE_PATIENT)
    modes = ("flair", "flair25d") if flair_only else ("rgb", "flair25d")
    sizes, norms = (64, 128), ("none", "volume")
    configs = tuple(PreprocessConfig(size, input_mode=mode, normalize=norm)
                    for size in sizes for mode in modes for norm in norms)  # fmt: skip
    floats = load_patient(rows, flair_only=flair_only)
    grey = load_patient(rows, flair_only=flair_only, as_uint8=True)
    assert grey.images.dtype == np.uint8 and grey.images.shape == floats.images.shape
    assert (grey.images.base if flair_only else grey.images).nbytes * 4 == (
        floats.images.base if flair_only else floats.images
    ).nbytes
    np.testing.assert_array_equal(unit_float(grey.images), floats.images)
    for a, b in zip(model_inputs(floats.images, configs), model_inputs(grey.images, configs),
                    strict=True):  # fmt: skip
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a, b)  # bit for bit: training and triage agree
    np.testing.assert_array_equal(grey.masks, floats.masks)
    assert grey.masks is not None and grey.masks.any()


def test_slice_changed_after_indexing_to_another_size_is_refused(
    kaggle_3m: Path, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / KAGGLE_PATIENT
    shutil.copytree(kaggle_3m / KAGGLE_PATIENT, folder)
    rows = _rows(tmp_path, KAGGLE_PATIENT)  # indexed first (the index refuses such a slice)
    tifffile.imwrite(folder / f"{KAGGLE_PATIENT}_5.tif", np.ones((128, 128, 3), np.uint8) * 50,
                     photometric="rgb")  # fmt: skip
    tifffile.imwrite(folder / f"{KAGGLE_PATIENT}_5_mask.tif", np.zeros((128, 128), np.uint8))
    for flair_only in (False, True):
        with pytest.raises(ArchiveError, match="differ in size") as info:
            load_patient(rows, flair_only=flair_only)
        assert info.value.path.endswith(f"{KAGGLE_PATIENT}_5.tif")


def test_load_patient_rejects_rows_of_two_patients(kaggle_3m: Path) -> None:
    table = build_index(kaggle_3m).table
    with pytest.raises(ValueError, match="one patient"):
        load_patient(table.head(40))


@pytest.mark.parametrize("patient", ["SYN_0001", "SYN_0002", "SYN_0003"])
def test_nifti_mask_roundtrip_in_each_orientation(
    nifti_archive: Path, patient: str, tmp_path: Path
) -> None:
    rows = _rows(nifti_archive, patient)
    ps = load_patient(rows)
    seg_file = nifti_archive / patient / f"{patient}_seg.nii.gz"
    seg = nib.load(seg_file)
    assert ps.spacing == pytest.approx((0.9, 0.9, 3.0))
    assert ps.images.shape == (6, 32, 32, 3) and ps.slices == list(range(6))
    assert ps.masks is not None
    pred = ps.masks if ps.masks.any() else ps.images[..., 1] > 0.5
    (out,) = ps.write_masks(pred, tmp_path)
    assert out.name == f"{patient}_pred.nii.gz"
    written = nib.load(out)
    assert written.shape == seg.shape
    np.testing.assert_allclose(written.affine, seg.affine)
    assert written.get_data_dtype() == np.uint8
    if ps.masks.any():
        np.testing.assert_array_equal(np.asanyarray(written.dataobj) > 0, seg.get_fdata() > 0)
    # a second load of the written mask, through the canonical path, gives the prediction back
    canonical = np.asanyarray(nib.as_closest_canonical(written).dataobj) > 0
    np.testing.assert_array_equal(np.transpose(canonical, (2, 0, 1)), pred)


def test_synthetic_orientations_differ_but_load_the_same_way(nifti_archive: Path) -> None:
    codes = {
        nib.aff2axcodes(nib.load(nifti_archive / p / f"{p}_flair.nii.gz").affine)
        for p in ("SYN_0001", "SYN_0002", "SYN_0003")
    }
    assert len(codes) == 3 and ("R", "A", "S") in codes


def test_deepmedic_case_channels_and_multiclass_labels(nifti_dir: Path, tmp_path: Path) -> None:
    folder = nifti_dir / "deepmedic_brats2015" / "brats_2013_pat0001_1"
    case = load_nifti_case(folder)
    assert case.image.shape == (240, 240, 155, 3) and case.image.dtype == np.float32
    assert case.image.min() >= 0.0 and case.image.max() <= 1.0
    # no T1 in deepmedic folders: the pre-contrast channel repeats FLAIR, T1c is its own
    np.testing.assert_array_equal(case.image[..., 0], case.image[..., 1])
    assert not np.array_equal(case.image[..., 2], case.image[..., 1])
    ot = nib.load(folder / "OTMultiClass.nii.gz")
    labels = np.asanyarray(ot.dataobj)
    assert set(np.unique(labels).astype(int)) <= {0, 1, 2, 3, 4} and labels.max() > 1
    assert case.mask is not None and int(case.mask.sum()) == int((labels > 0).sum())
    out = write_nifti_mask(case.mask, case, tmp_path / "m.nii.gz")
    written = nib.load(out)
    assert written.shape == ot.shape
    np.testing.assert_allclose(written.affine, ot.affine)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj) > 0, labels > 0)


def test_brats2023_case_has_three_distinct_channels_and_no_mask(nifti_dir: Path) -> None:
    case = load_nifti_case(nifti_dir / "brainlesion_brats2023" / "BraTS-GLI-00001-000")
    assert case.mask is None and case.patient == "BraTS-GLI-00001-000"
    assert case.sources["flair"].name.endswith("-t2f.nii.gz")
    assert case.sources["t1"].name.endswith("-t1n.nii.gz")
    assert case.sources["t1ce"].name.endswith("-t1c.nii.gz")
    channel_means = case.image.reshape(-1, 3).mean(axis=0)
    assert len({round(float(m), 4) for m in channel_means}) == 3


def test_big_endian_and_float64_single_files(nifti_dir: Path) -> None:
    big = load_nifti_case(nifti_dir / "nibabel" / "anatomical.nii")
    assert nib.load(nifti_dir / "nibabel" / "anatomical.nii").header.endianness == ">"
    assert big.image.shape == (33, 41, 25, 3) and big.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert big.image.min() == 0.0 and big.image.max() == 1.0 and big.mask is None
    f64 = load_nifti_case(nifti_dir / "nibabel" / "someones_anatomy.nii.gz")
    assert f64.image.dtype == np.float32 and f64.spacing == pytest.approx((2.75,) * 3)
    assert f64.patient == "someones_anatomy"


def test_four_d_volume_is_refused(nifti_dir: Path) -> None:
    with pytest.raises(ArchiveError, match="4-D volume"):
        load_nifti_case(nifti_dir / "nibabel" / "example4d.nii.gz")


def test_truncated_nifti_is_an_archive_error(tmp_path: Path) -> None:
    data = np.arange(20 * 20 * 10, dtype=np.int16).reshape(20, 20, 10)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "whole.nii.gz")
    raw = (tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        load_nifti_case(tmp_path / "cut.nii.gz")


def test_write_tif_mask_is_0_255_uint8(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 3:5] = True
    out = write_tif_mask(mask, tmp_path / "a" / "m.tif")
    pixels = tifffile.imread(out)
    assert pixels.dtype == np.uint8 and set(np.unique(pixels)) == {0, 255}
    assert int((pixels == 255).sum()) == 4


@pytest.mark.parametrize("shape", [(256, 256), (240, 240), (7, 13), (1, 1)])
def test_mask_tif_files_are_the_bytes_tifffile_writes(
    shape: tuple[int, int], tmp_path: Path
) -> None:
    rng = np.random.default_rng(sum(shape))
    masks = [np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) > 0.7]
    masks.append(rng.integers(-3, 4, shape))  # numbers: > 0 is foreground, as before
    for mask in masks:
        reference = io.BytesIO()
        pixels = np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)
        tifffile.imwrite(reference, pixels, photometric="minisblack")
        assert mask_tif_bytes(mask) == reference.getvalue()
        out = write_tif_mask(mask, tmp_path / "m.tif", atomic=False)
        assert np.array_equal(tifffile.imread(out), pixels)
    assert slices_module._TIF_LAYOUTS[shape] is not None  # the fast layout was confirmed and used


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("BraTS20_Training_001_flair.nii.gz", "flair"),
        ("BraTS20_Training_001_t1ce.nii.gz", "t1ce"),
        ("BraTS20_Training_001_t1.nii.gz", "t1"),
        ("BraTS20_Training_001_seg.nii.gz", "seg"),
        ("BraTS-GLI-00001-000-t2f.nii.gz", "flair"),
        ("BraTS-GLI-00001-000-t1n.nii.gz", "t1"),
        ("BraTS-GLI-00001-000-t1c.nii.gz", "t1ce"),
        ("BraTS-GLI-00001-000-t2w.nii.gz", "t2"),
        ("Flair_subtrMeanDivStd.nii.gz", "flair"),
        ("T1c_subtrMeanDivStd.nii.gz", "t1ce"),
        ("OTMultiClass.nii.gz", "seg"),
        ("brainmask.nii.gz", "aux"),
        ("anatomical.nii", None),
    ],
)
def test_sequence_role_from_name(name: str, role: str | None) -> None:
    assert sequence_role(name) == role
