"""Read a patient's slices from an archive and write predicted masks back in its own layout.

Two layouts: Kaggle LGG (`<patient>/<patient>_<k>.tif`, 256×256×3 uint8, with
`<patient>_<k>_mask.tif` 0/255) and NIfTI (see `pipeline.io.nifti`). `load_patient` takes the
index rows of one patient (`pipeline.io.index.build_index`) and returns pixels in memory as
`(N, H, W, 3)` float32 in [0, 1] (Kaggle slices optionally as their stored uint8);
`PatientSlices.write_masks` writes predictions back.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from pipeline.io.errors import ArchiveError
from pipeline.io.nifti import (
    NiftiCase,
    NiftiGeometry,
    load_nifti_case,
    write_nifti_mask,
)
from pipeline.io.preprocess import PreprocessConfig, unit_float
from pipeline.io.quality import (
    DEFAULT_LIMITS,
    Limits,
    check_patient_size,
    check_slice_size,
    check_values,
)

__all__ = [
    "ArchiveError",
    "NiftiCase",
    "NiftiGeometry",
    "PatientSlices",
    "load_nifti_case",
    "load_patient",
    "mask_tif_bytes",
    "read_kaggle_image",
    "read_kaggle_mask",
    "read_tif",
    "write_nifti_mask",
    "write_tif_mask",
]

NAN3 = (float("nan"), float("nan"), float("nan"))


def read_tif(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Read a TIF as stored (RGB order for colour images, never BGR).

    The declared size is checked against `limits` before any pixel is decoded. An archive's slices
    come from one exporter, so their files differ only in their pixels: a file whose every byte
    outside the pixel data equals that of a file tifffile already decoded here (same size, tags,
    strip offsets) takes its pixels straight from those strips (`_planned`), the same array
    tifffile gives without parsing the tags again (about 0.1 against 0.5 ms of CPU a Kaggle slice).

    Raises:
        ArchiveError: the file is missing, corrupt, truncated or too large (`InputQualityError`).
    """
    planned = _planned(path, limits)
    if planned is not None:
        return planned
    try:
        with tifffile.TiffFile(str(path)) as tif:
            if not tif.pages:
                raise ValueError("no image found (file truncated?)")
            page = tif.pages.first
            check_slice_size(page.shape, path, limits, tiny=False)
            expected = int(np.prod(page.shape)) * page.dtype.itemsize if page.dtype else 0
            if page.is_contiguous and page.dataoffsets:
                end = page.dataoffsets[0] + expected
                size = os.path.getsize(path)
                if end > size:
                    raise ValueError(f"truncated: needs {end} bytes, file has {size}")
            pixels = np.asarray(page.asarray(maxworkers=1))
            _remember_layout(path, page, pixels)
            return pixels
    except ArchiveError:
        raise
    except Exception as exc:  # tifffile raises several types for bad files
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise ArchiveError(path, f"unreadable TIF ({reason})") from exc


def _outside(data: bytes | bytearray, strips: tuple[tuple[int, int], ...]) -> bytes:
    """`data`'s bytes outside `strips` ((offset, length) in file order), in order."""
    view, parts, at = memoryview(data), [], 0
    for offset, count in strips:
        parts.append(view[at:offset])
        at = offset + count
    parts.append(view[at:])
    return b"".join(parts)


@dataclass(frozen=True)
class _TifLayout:
    """Where an uncompressed 8-bit TIF keeps its pixels, and every other byte of its file."""

    size: int
    strips: tuple[tuple[int, int], ...]  # (offset, length) of each strip, in file order
    shape: tuple[int, ...]
    other: bytes  # the file's bytes outside the strips, in order

    def pixels(self, data: bytearray) -> np.ndarray:
        """The (writable) image in `data`, a file of this layout, as tifffile decodes it."""
        need = int(np.prod(self.shape))
        first, last = self.strips[0][0], self.strips[-1][0] + self.strips[-1][1]
        if last - first == sum(c for _, c in self.strips):  # strips back to back: no copy
            flat = np.frombuffer(data, np.uint8, count=need, offset=first)
        else:
            view = memoryview(data)
            joined = bytearray(b"".join(view[o : o + c] for o, c in self.strips))
            flat = np.frombuffer(joined, np.uint8, count=need)
        return flat.reshape(self.shape)


#: Layouts of TIFs decoded here, by file size (`_remember_layout`), a few per size.
_TIF_LAYOUTS_SEEN: dict[int, list[_TifLayout]] = {}
_TIF_LAYOUTS_LOCK = threading.Lock()
_LAYOUTS_PER_SIZE = 4
_LAYOUT_SIZES = 64


def _remember_layout(path: str | Path, page: Any, pixels: np.ndarray) -> None:
    """Keep `page`'s layout when its pixels are plain bytes in strips (uncompressed 8-bit, no
    predictor, bit order as written, one plane) and reading those strips gives `pixels` exactly."""
    plain = (
        pixels.dtype == np.uint8
        and int(page.compression) == 1
        and int(page.predictor) == 1
        and int(page.fillorder) == 1
        and int(page.bitspersample) == 8
        and (int(page.planarconfig) == 1 or int(page.samplesperpixel) == 1)
        and not page.is_tiled
        and 0 < len(page.dataoffsets) == len(page.databytecounts)
    )
    if not plain:
        return
    strips = tuple(
        (int(o), int(c)) for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)
    )
    in_order = all(a + n <= b for (a, n), (b, _) in itertools.pairwise(strips))
    if not in_order or sum(c for _, c in strips) < pixels.size:
        return  # out of order, overlapping or short: leave such files to tifffile
    data = bytearray(Path(path).read_bytes())
    if strips[-1][0] + strips[-1][1] > len(data):
        return
    layout = _TifLayout(len(data), strips, tuple(pixels.shape), _outside(data, strips))
    if not np.array_equal(layout.pixels(data), pixels):
        return
    with _TIF_LAYOUTS_LOCK:
        known = _TIF_LAYOUTS_SEEN.setdefault(layout.size, [])
        if layout not in known:
            known.insert(0, layout)
            del known[_LAYOUTS_PER_SIZE:]
        while len(_TIF_LAYOUTS_SEEN) > _LAYOUT_SIZES:
            del _TIF_LAYOUTS_SEEN[next(iter(_TIF_LAYOUTS_SEEN))]


def _planned(path: str | Path, limits: Limits) -> np.ndarray | None:
    """The pixels of a file laid out as one `_remember_layout` kept (every byte outside the
    strips equal), else None (tifffile then reads it). Only a file of a size seen before is
    read, so nothing larger than a slice already accepted is ever read whole."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    with _TIF_LAYOUTS_LOCK:
        known = list(_TIF_LAYOUTS_SEEN.get(size, ()))
    if not known:
        return None
    data = bytearray(size)
    try:
        with open(path, "rb") as fh:
            if fh.readinto(data) != size:
                return None
    except OSError:
        return None
    for layout in known:
        if _outside(data, layout.strips) == layout.other:
            check_slice_size(layout.shape, path, limits, tiny=False)
            return layout.pixels(data)
    return None


def read_kaggle_image(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """A Kaggle slice as `(H, W, 3)` uint8 (pre-contrast, FLAIR, post-contrast).

    A single-channel TIF is copied to three channels.

    Raises:
        ArchiveError: unreadable, or not an 8-bit `(H, W)`/`(H, W, 3)` image.
    """
    pixels = read_tif(path, limits)
    check_slice_size(pixels.shape, path, limits)
    if pixels.dtype != np.uint8:
        raise ArchiveError(path, f"expected 8-bit pixels, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ArchiveError(path, f"expected an (H, W, 3) image, got shape {pixels.shape}")
    return pixels


def read_kaggle_mask(
    path: str | Path, shape: tuple[int, int] | None = None, limits: Limits = DEFAULT_LIMITS
) -> np.ndarray:
    """A Kaggle mask (0/255) as `(H, W)` bool; `shape` checks it matches its image.

    Raises:
        ArchiveError: unreadable, or its size differs from `shape`.
    """
    pixels = read_tif(path, limits)
    if pixels.ndim == 3:  # some tools save masks as RGB
        pixels = pixels.max(axis=-1)
    if pixels.ndim != 2:
        raise ArchiveError(path, f"expected an (H, W) mask, got shape {pixels.shape}")
    if shape is not None and pixels.shape != tuple(shape):
        got = "x".join(map(str, pixels.shape))
        want = "x".join(map(str, shape))
        raise ArchiveError(path, f"mask is {got} but its image is {want}")
    return pixels > 0


def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """`pipeline.io.manifest.atomic_write` (the package's one atomic-write helper)."""
    from pipeline.io.manifest import atomic_write

    atomic_write(path, write, durable=False)  # staged: the folder rename commits it


def _tif_bytes(pixels: np.ndarray) -> bytes:
    """tifffile's encoding of a 0/255 uint8 mask (uncompressed, "minisblack")."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, pixels, photometric="minisblack")
    return buf.getvalue()


#: Per mask shape, tifffile's file for an empty mask and where its pixel bytes start, or None when
#: that layout could not be confirmed (`mask_tif_bytes` then encodes every mask with tifffile).
_TIF_LAYOUTS: dict[tuple[int, int], tuple[bytes, int] | None] = {}


def _tif_layout(shape: tuple[int, int]) -> tuple[bytes, int] | None:
    """tifffile's bytes for an all-0 mask of `shape` and the offset of its pixels, when an all-255
    mask's file differs from it in exactly those `H * W` bytes (so a mask's file is the empty one
    with its pixels put in: the bytes tifffile writes, without its per-file tag handling)."""
    if shape not in _TIF_LAYOUTS:
        empty = _tif_bytes(np.zeros(shape, np.uint8))
        full = _tif_bytes(np.full(shape, 255, np.uint8))
        size = shape[0] * shape[1]
        layout = None
        if size and len(empty) == len(full):
            diff = np.flatnonzero(np.frombuffer(empty, np.uint8) != np.frombuffer(full, np.uint8))
            if diff.size == size and diff[-1] - diff[0] == size - 1:
                layout = (empty, int(diff[0]))
        _TIF_LAYOUTS[shape] = layout
    return _TIF_LAYOUTS[shape]


def mask_tif_bytes(mask: np.ndarray) -> bytes:
    """An `(H, W)` mask's 0/255 uint8 TIF file, byte for byte what `tifffile.imwrite` writes.

    The layout of tifffile's file is confirmed once per shape (`_tif_layout`); after that a mask is
    the empty mask's file with its pixels in place, about a third of tifffile's CPU time per file
    (triage writes one file per slice).
    """
    m = np.asarray(mask)
    pixels = np.where(m > 0, np.uint8(255), np.uint8(0)).astype(np.uint8, copy=False)
    layout = _tif_layout((int(m.shape[0]), int(m.shape[1]))) if m.ndim == 2 else None
    if layout is None:
        return _tif_bytes(pixels)
    empty, start = layout
    if not pixels.any():
        return empty
    return b"".join((empty[:start], pixels.tobytes(), empty[start + pixels.size :]))


def write_tif_mask(mask: np.ndarray, path: str | Path, atomic: bool = True) -> Path:
    """Write an `(H, W)` mask as 0/255 uint8 TIF (`mask_tif_bytes`): atomically, or straight to
    `path` with `atomic=False` (for a staging folder whose own rename commits its files)."""
    data = mask_tif_bytes(mask)
    out = Path(path)
    if atomic:
        _atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    else:
        out.write_bytes(data)
    return out


@dataclass
class PatientSlices:
    """All (or the selected) slices of one patient, in memory.

    Attributes:
        patient: patient key (an identifier: keep it out of logs).
        format: "kaggle" or "nifti".
        slices: slice numbers in order (Kaggle k, 1-based; NIfTI canonical axial z, 0-based).
        images: `(N, H, W, 3)` float32 in [0, 1], channels (T1, FLAIR, T1ce); uint8 grey levels
            for Kaggle slices loaded `as_uint8` (`pipeline.io.preprocess.unit_float` gives the
            floats).
        masks: `(N, H, W)` bool ground truth, or None when the patient has none at all.
        spacing: `(sx, sy, sz)` mm; NaN when unknown (Kaggle).
        has_mask: `(N,)` bool, False where a slice's ground truth is missing (its mask row is
            all False then and must not be used as a label).
        image_paths: source file of each slice.
        geometry: NIfTI/DICOM stored grid and reorientation (None for Kaggle).
        dicom: the DICOM series read (`pipeline.io.dicom_case.DicomSource`), None otherwise.
    """

    patient: str
    format: str
    slices: list[int]
    images: np.ndarray
    masks: np.ndarray | None
    spacing: tuple[float, float, float]
    has_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    image_paths: list[str] = field(default_factory=list)
    geometry: NiftiGeometry | None = None
    dicom: Any = None

    @property
    def native_hw(self) -> tuple[int, int]:
        """Native `(H, W)` of the slices."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def write_masks(
        self, pred: np.ndarray, out_dir: str | Path, name: str | None = None, staged: bool = False
    ) -> list[Path]:
        """Write predicted masks in the input's own layout.

        Kaggle: one `<patient>_<k>_pred.tif` per slice (0/255 uint8, native size).
        NIfTI: one `<patient>_pred.nii.gz` (uint8 0/1) in the input's grid, affine and shape;
        slices not in `self.slices` are written as 0. DICOM: the same NIfTI mask (series grid)
        plus `<patient>_seg.dcm`, a DICOM Segmentation referencing the source images.

        Args:
            pred: `(N, H, W)` bool, same N, H, W as `images`.
            out_dir: output folder (created).
            name: file name prefix (default: the patient key; pass `safety.output_name(key)`).
            staged: `out_dir` is a fresh staging folder that one rename commits (triage's): the
                per-slice Kaggle masks are written straight into it, not each through a
                temporary file and a rename of its own (0.43 against 0.65 ms of CPU a slice).

        Returns:
            Paths written.
        """
        mask = np.asarray(pred) > 0
        want = (len(self.slices), *self.native_hw)
        if mask.shape != want:
            raise ValueError(f"pred shape {mask.shape} differs from the patient's {want}")
        out = Path(out_dir)
        prefix = name or self.patient
        if self.format == "kaggle":
            out.mkdir(parents=True, exist_ok=True)
            return [
                write_tif_mask(m, out / f"{prefix}_{k}_pred.tif", atomic=not staged)
                for k, m in zip(self.slices, mask, strict=True)
            ]
        if self.geometry is None:
            raise ValueError("NIfTI patient without geometry; cannot write a mask back")
        canonical = np.zeros(self.geometry.canonical_shape, dtype=bool)
        canonical[:, :, self.slices] = np.transpose(mask, (1, 2, 0))
        paths = [write_nifti_mask(canonical, self.geometry, out / f"{prefix}_pred.nii.gz")]
        if self.format == "dicom":
            from pipeline.io.dicom_seg import write_dicom_seg

            native = self.geometry.to_native(canonical)
            paths.append(write_dicom_seg(native, self.dicom, out / f"{prefix}_seg.dcm"))
        return paths


def _one_patient(rows: pd.DataFrame) -> tuple[str, str]:
    if rows.empty:
        raise ValueError("load_patient needs at least one index row")
    patients = rows["patient"].unique()
    formats = rows["format"].unique()
    if len(patients) != 1 or len(formats) != 1:
        raise ValueError(f"load_patient needs the rows of one patient, got {len(patients)}")
    return str(patients[0]), str(formats[0])


def _load_kaggle(
    patient: str, rows: pd.DataFrame, limits: Limits, flair_only: bool = False,
    as_uint8: bool = False,
) -> PatientSlices:  # fmt: skip
    stacked: np.ndarray | None = None
    masks: np.ndarray | None = None  # allocated at the first ground-truth mask: no list, no stack
    for i, row in enumerate(rows.itertuples(index=False)):
        pixels = read_kaggle_image(str(row.image_path), limits)
        if stacked is None:  # one uint8 block filled in place: no list of slices beside it
            stacked = np.empty((len(rows), *pixels.shape[: 2 if flair_only else 3]), np.uint8)
        elif pixels.shape[:2] != stacked.shape[1:3]:
            sizes = sorted({pixels.shape[:2], stacked.shape[1:3]})
            raise ArchiveError(str(row.image_path), f"slices of one patient differ in size {sizes}")
        stacked[i] = pixels[..., 1] if flair_only else pixels
        if row.has_mask and row.mask_path:
            if masks is None:
                masks = np.zeros((len(rows), *pixels.shape[:2]), dtype=bool)
            masks[i] = read_kaggle_mask(str(row.mask_path), pixels.shape[:2], limits)
    assert stacked is not None, "rows checked non-empty by _one_patient"
    check_values(stacked, str(rows["source"].iloc[0]) if "source" in rows else patient)
    images = stacked if as_uint8 else unit_float(stacked)
    del stacked
    if flair_only:  # a read-only view: every channel shows FLAIR, which alone takes memory
        images = np.broadcast_to(images[..., None], (*images.shape, 3))
    has_mask = rows["has_mask"].to_numpy(dtype=bool)
    if masks is None and has_mask.any():  # listed as labelled, but no mask file: all empty
        masks = np.zeros(images.shape[:3], dtype=bool)
    return PatientSlices(
        patient=patient,
        format="kaggle",
        slices=[int(k) for k in rows["slice"]],
        images=images,
        masks=masks,
        spacing=NAN3,
        has_mask=has_mask,
        image_paths=[str(p) for p in rows["image_path"]],
    )


def _load_nifti(
    patient: str, rows: pd.DataFrame, config: PreprocessConfig | None, limits: Limits
) -> PatientSlices:
    source = str(rows["source"].iloc[0]) if "source" in rows else str(rows["image_path"].iloc[0])
    case = load_nifti_case(source, config, limits)
    return _slices_of(case, rows, source)


def _slices_of(case: NiftiCase, rows: pd.DataFrame, source: str) -> PatientSlices:
    """The canonical axial slices listed in `rows` of a case on the canonical RAS grid."""
    patient = str(rows["patient"].iloc[0])
    slices = [int(z) for z in rows["slice"]]
    depth = case.image.shape[2]
    if any(z < 0 or z >= depth for z in slices):
        raise ArchiveError(source, f"index asks for slices outside 0..{depth - 1}; re-index")
    images = np.ascontiguousarray(np.transpose(case.image[:, :, slices], (2, 0, 1, 3)))
    masks = None
    if case.mask is not None:
        masks = np.ascontiguousarray(np.transpose(case.mask[:, :, slices], (2, 0, 1)))
    return PatientSlices(
        patient=patient,
        format="nifti",
        slices=slices,
        images=images,
        masks=masks,
        spacing=case.spacing,
        has_mask=np.full(len(slices), masks is not None),
        image_paths=[str(case.sources["flair"])] * len(slices),
        geometry=case.geometry,
    )


def _load_dicom(
    patient: str, rows: pd.DataFrame, config: PreprocessConfig | None, limits: Limits
) -> PatientSlices:
    from pipeline.io.dicom_case import load_dicom_case

    first = rows.iloc[0]
    case, source = load_dicom_case(
        str(first["source"]), str(first["series_uid"]), patient, str(first["series_rule"]),
        config, limits,
    )  # fmt: skip
    ps = _slices_of(case, rows, str(first["source"]))
    ps.format, ps.dicom = "dicom", source
    return ps


def load_patient(
    rows: pd.DataFrame,
    config: PreprocessConfig | None = None,
    limits: Limits = DEFAULT_LIMITS,
    *,
    flair_only: bool = False,
    as_uint8: bool = False,
) -> PatientSlices:
    """Load every slice listed in one patient's index rows.

    Args:
        rows: rows of `build_index(...).table` for one patient (any order; sorted by slice here).
        config: NIfTI intensity percentiles (defaults if None); Kaggle pixels are uint8 / 255.
        limits: the size limits the index applied (checked again: each header, and the memory
            the patient's slices take decoded, from the rows' heights and widths, before any).
        flair_only: Kaggle slices keep FLAIR's pixels alone, for models that read FLAIR alone
            (`PreprocessConfig.reads_flair_only`): `images` is then a read-only view whose three
            channels all show FLAIR (as in the set's FLAIR-only patients), a third of the memory.
            NIfTI and DICOM cases are read whole either way.
        as_uint8: Kaggle slices keep their stored uint8 grey levels (a quarter of the float
            memory); `pipeline.io.preprocess` makes the same model inputs from them, converting a
            few slices at a time. NIfTI and DICOM pixels are float32 in [0, 1] either way.

    Returns:
        The patient's slices, images `(N, H, W, 3)` float32 in [0, 1] (uint8 with `as_uint8`
        for Kaggle).

    Raises:
        ArchiveError: a file is unreadable (the message names it and says why);
            `InputQualityError` when a limit is exceeded.
        ValueError: `rows` is empty or spans several patients.
    """
    patient, fmt = _one_patient(rows)
    pixels = int((rows["height"] * rows["width"]).sum())
    check_patient_size(pixels, len(rows), str(rows["source"].iloc[0]), limits)
    ordered = rows.sort_values("slice", kind="stable")
    if fmt == "kaggle":
        return _load_kaggle(patient, ordered, limits, flair_only, as_uint8)
    if fmt == "nifti":
        return _load_nifti(patient, ordered, config, limits)
    if fmt == "dicom":
        return _load_dicom(patient, ordered, config, limits)
    raise ValueError(f"unknown format {fmt!r}")
