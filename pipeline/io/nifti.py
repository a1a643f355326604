"""NIfTI cases: find the sequences of a patient, reorient to RAS for slicing, and go back exactly.

A case is a patient folder (BraTS 2015/2020 `*_flair`, `*_t1`, `*_t1ce`, `*_t2`, `*_seg`;
BraTS 2023 `*-t2f`, `*-t1n`, `*-t1c`, `*-t2w`, `*-seg`; deepmedic `Flair*`, `T1c*`, `OT*`)
or one `.nii`/`.nii.gz` file (taken as the only sequence, no ground truth). Reorientation uses
`nibabel.orientations` (axis permutation and flips only, no resampling), so a mask drawn on the
canonical grid maps back voxel for voxel onto the stored grid and affine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from pipeline.io.errors import ArchiveError
from pipeline.io.preprocess import PreprocessConfig, assemble_channels, normalize_intensity
from pipeline.io.quality import (
    DEFAULT_LIMITS,
    InputQualityError,
    Limits,
    check_slice_size,
    check_spacing,
    check_values,
    check_volume_size,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Name tokens (first or last `_`/`-`/`.`-separated token, lower case) → sequence role.
_ROLE_TOKENS = {
    "flair": "flair",
    "t2f": "flair",
    "t1": "t1",
    "t1n": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "seg": "seg",
    "ot": "seg",
    "otmulticlass": "seg",
}
#: NIfTI files that may sit beside the sequences and are not used (deepmedic's brain masks).
_AUXILIARY_TOKENS = {"brainmask", "mask", "brain"}
_RAS = ornt.axcodes2ornt(("R", "A", "S"))


def is_nifti(name: str) -> bool:
    """True for `*.nii` and `*.nii.gz` file names (case-insensitive)."""
    return name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(name: str) -> str:
    """File name without `.nii`/`.nii.gz`."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def sequence_role(name: str) -> str | None:
    """Role of a NIfTI file from its name: flair|t1|t1ce|t2|seg, "aux" (unused) or None."""
    tokens = [t for t in re.split(r"[_\-.]+", nifti_stem(name).lower()) if t]
    if not tokens:
        return None
    for token in (tokens[-1], tokens[0]):
        if token in _ROLE_TOKENS:
            return _ROLE_TOKENS[token]
    if tokens[0] in _AUXILIARY_TOKENS or tokens[-1] in _AUXILIARY_TOKENS:
        return "aux"
    return None


@dataclass(frozen=True)
class NiftiGeometry:
    """What is needed to go from the stored grid to canonical RAS and back.

    Attributes:
        affine: `(4, 4)` voxel→world (mm) affine of the FLAIR file as stored.
        shape: stored 3-D shape.
        to_canonical: orientation transform (nibabel `ornt`) stored → RAS.
        spacing: canonical `(sx, sy, sz)` voxel size in mm.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    to_canonical: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def from_header(cls, image: nib.Nifti1Image | nib.Nifti2Image) -> NiftiGeometry:
        return cls.from_affine(np.asarray(image.affine), tuple(int(s) for s in image.shape[:3]))

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...]) -> NiftiGeometry:
        """Geometry of a stored grid `shape` (3-D) with RAS `affine` (also used for DICOM)."""
        transform = ornt.ornt_transform(ornt.io_orientation(affine), _RAS)
        canonical_affine = affine @ ornt.inv_ornt_aff(transform, shape)
        sizes = nib.affines.voxel_sizes(canonical_affine)
        return cls(
            affine=np.asarray(affine, dtype=np.float64),
            shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            to_canonical=transform,
            spacing=(float(sizes[0]), float(sizes[1]), float(sizes[2])),
        )

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        order = self.to_canonical[:, 0].astype(int)
        out = [0, 0, 0]
        for stored_axis, canonical_axis in enumerate(order):
            out[canonical_axis] = self.shape[stored_axis]
        return (out[0], out[1], out[2])

    def canonical(self, data: np.ndarray) -> np.ndarray:
        """Stored-grid `(…3-D…)` array → canonical RAS `(X, Y, Z)`."""
        return np.ascontiguousarray(ornt.apply_orientation(data, self.to_canonical))

    def to_native(self, canonical: np.ndarray) -> np.ndarray:
        """Canonical `(X, Y, Z)` array → the stored grid (exact inverse of `canonical`)."""
        if canonical.shape[:3] != self.canonical_shape:
            raise ValueError(
                f"mask shape {canonical.shape[:3]} differs from canonical {self.canonical_shape}"
            )
        back = ornt.ornt_transform(_RAS, ornt.io_orientation(self.affine))
        return np.ascontiguousarray(ornt.apply_orientation(canonical, back))


@dataclass
class NiftiCase:
    """One NIfTI patient in canonical RAS orientation.

    Attributes:
        patient: folder name, or file stem for a single volume.
        image: `(X, Y, Z, 3)` float32 in [0, 1], channels (T1, FLAIR, T1ce); axial slice z is
            `image[:, :, z]`.
        mask: `(X, Y, Z)` bool (any label > 0), or None without ground truth.
        geometry: stored affine/shape and the reorientation (see `to_native`).
        sources: role → file path of the sequences used.
    """

    patient: str
    image: np.ndarray
    mask: np.ndarray | None
    geometry: NiftiGeometry
    sources: dict[str, Path]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    @property
    def affine(self) -> np.ndarray:
        return self.geometry.affine

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    def to_native(self, mask_canonical: np.ndarray) -> np.ndarray:
        return self.geometry.to_native(mask_canonical)


def find_sequences(path: Path) -> tuple[dict[str, Path], list[dict[str, str]]]:
    """Map a case (folder or single file) to its sequence files.

    Returns:
        (roles, problems): roles maps flair|t1|t1ce|t2|seg → path; problems are
        `{"path", "reason"}` for NIfTI files whose role is unknown or duplicated.
    """
    if path.is_file():
        return {"flair": path}, []
    roles: dict[str, Path] = {}
    problems: list[dict[str, str]] = []
    for child in sorted(path.iterdir()):
        if not is_nifti(child.name):
            continue
        role = sequence_role(child.name)
        if role == "aux":
            continue
        if role is None:
            problems.append(
                {"path": str(child), "reason": "NIfTI file with an unknown sequence name"}
            )
        elif role in roles:
            problems.append(
                {"path": str(child), "reason": f"second {role} file in one case; ignored"}
            )
        else:
            roles[role] = child
    return roles, problems


def load_header(path: Path, limits: Limits = DEFAULT_LIMITS) -> nib.Nifti1Image:
    """Open a NIfTI file (header only), or raise `ArchiveError` saying why not.

    The declared shape is checked against `limits` here, before any voxel is decompressed.
    """
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise ArchiveError(path, f"unreadable NIfTI header ({reason})") from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise ArchiveError(path, f"not a NIfTI-1/2 image ({type(image).__name__})")
    shape = image.shape
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
        raise ArchiveError(path, f"{len(shape)}-D volume {tuple(shape)}, expected 3-D")
    check_volume_size(shape[:3], path, limits)
    return image


def _stored_zooms(image: nib.Nifti1Image, path: Path) -> tuple[float, float, float]:
    """Voxel sizes as stored in the file: nibabel quietly turns a 0 `pixdim` into 1 on load."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as fh:
        raw = type(image.header).from_fileobj(fh, check=False)
    zooms = raw["pixdim"][1:4]
    return float(zooms[0]), float(zooms[1]), float(zooms[2])


def open_volume(
    path: Path, limits: Limits = DEFAULT_LIMITS
) -> tuple[nib.Nifti1Image, NiftiGeometry]:
    """The one check of a NIfTI volume's header, shared by the index and the loader.

    Shape within `limits`, a usable affine (finite, invertible) and a positive finite voxel size;
    no voxel is read.

    Raises:
        ArchiveError: unreadable or degenerate header (`InputQualityError` for limits/spacing).
    """
    image = load_header(path, limits)
    try:
        affine = np.asarray(image.affine, dtype=np.float64)
        if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("affine is not finite or not invertible")
        geometry = NiftiGeometry.from_header(image)
    except Exception as exc:
        raise InputQualityError(path, f"degenerate NIfTI header ({exc})") from exc
    check_spacing(geometry.spacing, path)
    check_spacing(_stored_zooms(image, path), path)
    check_slice_size(geometry.canonical_shape[:2], path, limits)
    return image, geometry


def read_volume(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The stored voxels as an array (scaling applied, 3-D), or `ArchiveError` if truncated."""
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise ArchiveError(
            path, f"corrupt or truncated NIfTI data ({type(exc).__name__}: {exc})"
        ) from exc
    return data.reshape(data.shape[:3])


#: Largest difference (mm, any affine entry) between a sequence's grid and the FLAIR file's.
GRID_TOLERANCE_MM = 1e-3


def check_same_grid(reference: NiftiGeometry, other: NiftiGeometry, path: Path) -> None:
    """Raise `ArchiveError` unless `other` lies on the FLAIR file's grid (index and loader)."""
    if other.shape != reference.shape:
        raise ArchiveError(path, f"shape {other.shape} differs from FLAIR {reference.shape}")
    if not np.allclose(other.affine, reference.affine, rtol=0.0, atol=GRID_TOLERANCE_MM):
        shift = float(np.max(np.abs(other.affine - reference.affine)))
        raise ArchiveError(path, f"affine differs from the FLAIR file's by up to {shift:.3g} mm")


def load_nifti_case(
    path: str | Path, config: PreprocessConfig | None = None, limits: Limits = DEFAULT_LIMITS
) -> NiftiCase:
    """Read a NIfTI patient (folder or single file) into canonical RAS orientation.

    Each sequence is normalised on its own (`normalize_intensity`, the config's percentiles)
    and assembled as (T1, FLAIR, T1ce); a missing T1 or T1ce is replaced by FLAIR.

    Args:
        path: patient folder or a single `.nii`/`.nii.gz` file.
        config: preprocessing percentiles (defaults if None).
        limits: resource limits checked from each header before reading voxels.

    Returns:
        The case; raises `ArchiveError` with a clear message for unreadable input.
    """
    path = Path(path)
    cfg = config or PreprocessConfig()
    roles, _ = find_sequences(path)
    if "flair" not in roles:
        found = ", ".join(sorted(roles)) or "none"
        raise ArchiveError(path, f"no FLAIR sequence (found: {found})")
    flair_image, geometry = open_volume(roles["flair"], limits)
    channels: dict[str, np.ndarray] = {}
    for role in ("flair", "t1", "t1ce"):
        if role not in roles:
            continue
        if role == "flair":
            image, other = flair_image, geometry
        else:
            image, other = open_volume(roles[role], limits)
        check_same_grid(geometry, other, roles[role])
        raw = geometry.canonical(read_volume(image, roles[role]))
        check_values(raw, roles[role])
        channels[role] = normalize_intensity(raw, cfg.low_percentile, cfg.high_percentile)
    stacked = assemble_channels(channels["flair"], channels.get("t1"), channels.get("t1ce"))
    mask = None
    if "seg" in roles:
        seg_image, seg_geometry = open_volume(roles["seg"], limits)
        check_same_grid(geometry, seg_geometry, roles["seg"])
        mask = geometry.canonical(read_volume(seg_image, roles["seg"])) > 0
    patient = path.name if path.is_dir() else nifti_stem(path.name)
    return NiftiCase(patient, stacked, mask, geometry, {k: roles[k] for k in sorted(roles)})


def write_nifti_mask(
    mask_canonical: np.ndarray, case: NiftiCase | NiftiGeometry, path: Path
) -> Path:
    """Write a canonical-grid mask as uint8 0/1 NIfTI with the input's own affine and shape.

    Written to a temporary name in the same folder and renamed, so a crash never leaves a
    half-written file.

    Args:
        mask_canonical: `(X, Y, Z)` bool on the canonical RAS grid of `case`.
        case: the case (or its geometry) the mask belongs to.
        path: output `.nii.gz` path.

    Returns:
        `path`.
    """
    geometry = case.geometry if isinstance(case, NiftiCase) else case
    native = geometry.to_native(np.asarray(mask_canonical) > 0).astype(np.uint8)
    image = nib.Nifti1Image(native, geometry.affine)
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    path = Path(path)
    from pipeline.io.manifest import atomic_write

    atomic_write(path, lambda tmp: nib.save(image, tmp), durable=False)  # staged per patient
    return path
