"""A hostile-input corpus built on the fly (never committed): one archive holding every class of bad
input beside good patients, with what a run must say about each.

`build_corpus(root)` writes `root/archive` plus files outside it (link targets) and returns the
archive path and the `Case` list. Classes follow issue 9: keys that collide with the run's files
or are not printable (7), strings that would run in a page or a spreadsheet (8), scans that cannot
be screened (11), files that must not stop the archive (12).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile

from pipeline.io.synthetic import write_synthetic_archive

SIZE = 64


@dataclass(frozen=True)
class Case:
    """One hostile input and what the run must report for it.

    Attributes:
        cls: issue item, e.g. "7 keys".
        name: the variant.
        key: the patient key the run must list (None: a file that belongs to no patient).
        expect: "done" (screened; `reason` may still name skipped files), "failed" (listed as
            failed, never tumour-free) or "skipped" (a skipped file in the worklist page).
        reason: fragment the reason must contain ("" when none is required).
    """

    cls: str
    name: str
    key: str | None
    expect: str
    reason: str = ""


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Relative path → content hash (or link target) of all under `root`; links not followed."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = os.fsencode(path.relative_to(root)).hex()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def _slices(seed_dir: Path, n: int = 3) -> list[np.ndarray]:
    return [tifffile.imread(seed_dir / f"{seed_dir.name}_{k}.tif") for k in range(1, n + 1)]


def kaggle(
    archive: Path, key: str, images: list[np.ndarray], names: list[str] | None = None
) -> Path:
    """A Kaggle patient folder `key` with `<key>_<k>.tif` slices (or the given file names)."""
    folder = archive / key
    folder.mkdir(parents=True)
    names = names or [f"{key}_{k}.tif" for k in range(1, len(images) + 1)]
    for name, img in zip(names, images, strict=True):
        tifffile.imwrite(str(folder / name), img)
    return folder


def nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    aff = np.diag([0.9, 0.9, 3.0, 1.0]) if affine is None else affine
    nib.Nifti1Image(data, aff).to_filename(str(path))
    return path


def _volume(rng: np.random.Generator) -> np.ndarray:
    vol = rng.integers(0, 400, (SIZE, SIZE, 4)).astype(np.int16)
    vol[SIZE // 3 : SIZE // 2, SIZE // 3 : SIZE // 2] = 900  # a bright blob
    return vol


def _keys(archive: Path, good: list[np.ndarray], rng: np.random.Generator) -> list[Case]:
    kaggle_keys = [
        ("run file", ".triage.lock"), ("run file", ".staging"), ("run file", "index.html"),
        ("run file", "summary.csv"), ("dot", "..hidden"), ("control", "tab\there"),
        ("control", "esc\x1b[31mred"), ("html", "<img src=x onerror=alert(1)>"),
        ("url", "javascript:alert(1)"), ("csv", "=HYPERLINK(1)"), ("csv", "+1"), ("csv", "-cmd"),
        ("csv", "@SUM(1)"),
    ]  # fmt: skip
    cases = []
    for what, key in kaggle_keys:
        kaggle(archive, key, good)
        cls = "8 escaping" if what in ("html", "url", "csv") else "7 keys"
        cases.append(Case(cls, f"kaggle {what} {key!r}", key, "done"))
    raw = os.fsdecode(b"P\xff\xfe")  # not UTF-8: a key with surrogate escapes
    kaggle(archive, raw, good)
    cases.append(Case("7 keys", "kaggle non-UTF-8 name", raw, "done"))
    for stem in (".", "..", "manifest.json"):  # one-file NIfTI patients: the key is the stem
        nifti(archive / f"{stem}.nii.gz", _volume(rng))
        cases.append(Case("7 keys", f"nifti stem {stem!r}", stem, "done"))
    return cases


def _quality(archive: Path, rng: np.random.Generator) -> list[Case]:
    shape = (SIZE, SIZE, 3)
    cases = [
        Case("11 quality", "kaggle all zero", "Q_zero", "failed", "all zero"),
        Case("11 quality", "kaggle constant", "Q_const", "failed", "constant"),
        Case("11 quality", "kaggle tiny 8x8", "Q_tiny", "failed", "too small"),
    ]
    kaggle(archive, "Q_zero", [np.zeros(shape, np.uint8)] * 3)
    kaggle(archive, "Q_const", [np.full(shape, 77, np.uint8)] * 3)
    kaggle(archive, "Q_tiny", [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)] * 3)
    vol = _volume(rng).astype(np.float32)
    nan, inf = vol.copy(), vol.copy()
    nan[3, 3, 1], inf[5, 5, 2] = np.nan, np.inf
    nifti(archive / "Q_nan.nii.gz", nan)
    nifti(archive / "Q_inf.nii.gz", inf)
    nifti(archive / "Q_flat.nii.gz", np.full((SIZE, SIZE, 4), 5, np.int16))
    nifti(archive / "Q_zeros.nii.gz", np.zeros((SIZE, SIZE, 4), np.int16))
    for name, pixdim in (("Q_zerovox", [0.9, 0.0, 3.0]), ("Q_nanvox", [np.nan, 0.9, 3.0])):
        img = nib.Nifti1Image(_volume(rng), None)  # no sform/qform: the affine comes from pixdim
        img.header["pixdim"][1:4] = pixdim
        img.to_filename(str(archive / f"{name}.nii.gz"))
    cases += [
        Case("11 quality", "nifti NaN voxel", "Q_nan", "failed", "NaN"),
        Case("11 quality", "nifti Inf voxel", "Q_inf", "failed", "NaN or infinite"),
        Case("11 quality", "nifti constant", "Q_flat", "failed", "constant"),
        Case("11 quality", "nifti all zero", "Q_zeros", "failed", "all zero"),
        Case("11 quality", "nifti zero voxel size", "Q_zerovox", "failed", "voxel size"),
        Case("11 quality", "nifti NaN voxel size", "Q_nanvox", "failed", "not finite"),
    ]
    return cases


def _bad_files(archive: Path, outside: Path, good: list[np.ndarray], rng: np.random.Generator):
    cases = []
    kaggle(archive, "B_dup", good, ["B_dup_1.tif", "B_dup_01.tif", "B_dup_2.tif"])
    cases.append(Case("12 bad files", "duplicate slice number", "B_dup", "done", "duplicate slice"))
    link = kaggle(archive, "B_link", good[:2])
    (link / "B_link_3.tif").symlink_to("B_link_1.tif")
    cases.append(Case("12 bad files", "symlinked duplicate slice", "B_link", "done", "same file"))
    (archive / "LINKDIR").symlink_to("B_dup")
    cases.append(Case("12 bad files", "symlinked duplicate folder", None, "skipped", "already"))
    (outside / "secret.tif").write_bytes(b"outside")
    (archive / "escape.tif").symlink_to(outside / "secret.tif")
    cases.append(Case("12 bad files", "link out of the archive", None, "skipped", "outside"))
    tifffile.imwrite(str(archive / "stray.tif"), good[0])
    cases.append(Case("12 bad files", "stray TIF at the root", None, "skipped", "archive root"))
    tifffile.imwrite(os.fsdecode(bytes(archive) + b"/\xffstray.tif"), good[0])
    cases.append(Case("12 bad files", "non-UTF-8 stray at root", None, "skipped", "archive root"))
    (archive / "notes.txt").write_text("not an image\n")  # ignored beside patients: no case
    deep = archive.joinpath(*[f"d{i}" for i in range(40)])
    kaggle(deep.parent, deep.name, good)
    cases.append(Case("12 bad files", "40 folders deep", None, "skipped", "nested deeper"))
    site = kaggle(archive / "siteA", "PAT1", good)
    (site / "junk.bin").write_bytes(b"\0" * 10)
    cases.append(Case("3 index", "siteA/PAT1 layout", "PAT1", "done", "junk.bin"))
    html = kaggle(archive, "B_html", good)
    (html / "<b onmouseover=alert(1)>.txt").write_text("x")
    cases.append(Case("8 escaping", "HTML in a reason", "B_html", "done", "onmouseover"))
    (archive / "H_trunc.nii.gz").write_bytes(gzip.compress(b"\x5c\x01" + bytes(20)))
    (archive / "H_garbage.nii").write_bytes(rng.integers(0, 255, 500, dtype=np.uint8).tobytes())
    nifti(archive / "H_4d.nii.gz", np.stack([_volume(rng)] * 2, axis=-1))
    nifti(archive / "H_thin.nii.gz", np.zeros((SIZE, 2, 4), np.int16) + 1)
    cases += [
        Case("12 bad files", "truncated NIfTI header", "H_trunc", "failed", "NIfTI"),
        Case("12 bad files", "garbage .nii", "H_garbage", "failed", "NIfTI"),
        Case("12 bad files", "4-D volume", "H_4d", "failed", "4-D"),
        Case("12 bad files", "2-pixel-wide volume", "H_thin", "failed", "too small"),
    ]
    return cases


def build_corpus(root: Path) -> tuple[Path, list[Case]]:
    """Write the corpus under `root` (archive at `root/archive`); returns it and its cases."""
    archive = root / "archive"
    write_synthetic_archive(archive, patients=3, fmt="kaggle", seed=4, slices=3, image_size=SIZE)
    outside = root / "outside"
    outside.mkdir()
    rng = np.random.default_rng(9)
    good = _slices(archive / "SYN_0001")
    cases = [Case("good", f"synthetic {k}", k, "done") for k in ("SYN_0001", "SYN_0003")]
    non_utf8_file = os.fsdecode(bytes(archive) + b"/SYN_0002/\xff.txt")
    Path(non_utf8_file).write_text("x")
    cases.append(Case("12 bad files", "non-UTF-8 file in a patient", "SYN_0002", "done", "\\xff"))
    cases += _keys(archive, good, rng)
    cases += _quality(archive, rng)
    cases += _bad_files(archive, outside, good, rng)
    return archive, cases
