"""Synthetic brain-MRI archives: seeded phantoms with FLAIR-bright tumours, in the real layouts.

Each patient is a stack of axial slices with a skull ring, a brain ellipse whose size follows
the slice position, grey and white matter with smooth texture, two ventricles, a bias field,
Gaussian noise and per-patient gain/gamma. About a quarter of the patients are tumour-free;
the others carry one irregular tumour spanning a run of slices, hyperintense on FLAIR,
hypointense on T1, with an enhancing rim after contrast in some patients.

Layouts: Kaggle LGG (`<patient>/<patient>_<k>.tif` uint8 RGB + `_mask.tif` 0/255, plus a
`data.csv`) and BraTS-2020-style NIfTI (`<patient>/<patient>_{flair,t1,t1ce,t2,seg}.nii.gz`,
int16 raw intensities, 0.9 × 0.9 × 3 mm voxels, stored RAS, LPS or PSR so that readers must
reorient).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import tifffile
from nibabel import orientations as ornt
from scipy import ndimage

#: Tissue intensities in [0, 1]: (T1, FLAIR, T1ce, T2).
_TISSUE = {
    "skull": (0.70, 0.30, 0.72, 0.25),
    "csf": (0.12, 0.06, 0.12, 0.90),
    "grey": (0.42, 0.45, 0.44, 0.55),
    "white": (0.55, 0.36, 0.57, 0.42),
    "tumour": (0.30, 0.88, 0.38, 0.80),
    "rim": (0.30, 0.88, 0.85, 0.75),
}
#: Orientations synthetic NIfTI patients are stored in, in turn.
_ORIENTATIONS = (("R", "A", "S"), ("L", "P", "S"), ("P", "S", "R"))
SPACING_MM = (0.9, 0.9, 3.0)


@dataclass
class Phantom:
    """One synthetic patient.

    Attributes:
        channels: `(C, Z, H, W)` float32 in [0, 1] (T1, FLAIR, T1ce[, T2]), slice z = axial z.
        labels: `(Z, H, W)` uint8 BraTS-style labels (0 none, 1 core, 2 oedema, 4 enhancing).
    """

    channels: np.ndarray
    labels: np.ndarray


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cells: int) -> np.ndarray:
    """Smooth noise `(Z, H, W)`, roughly unit variance, features about H/cells wide."""
    z, h, w = shape
    coarse = rng.standard_normal((z, cells, cells)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, sigma=(0.8, 1.0, 1.0))
    coarse /= coarse.std() + 1e-6
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC) for c in coarse])


def make_phantom(
    rng: np.random.Generator,
    slices: int,
    size: int,
    tumour: bool,
    enhancing: bool,
    n_channels: int = 4,
) -> Phantom:
    """Draw one phantom patient.

    Args:
        rng: the patient's random generator.
        slices: number of axial slices Z.
        size: in-plane side H = W in pixels.
        tumour: whether the patient has a tumour.
        enhancing: whether the tumour has a contrast-enhancing rim.
        n_channels: 4 (T1, FLAIR, T1ce, T2) or 3 (without T2).

    Returns:
        The phantom (intensities after bias field, noise and per-patient gain/gamma).
    """
    shape = (slices, size, size)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    t = np.linspace(-0.85, 0.85, slices, dtype=np.float32)[:, None, None]
    scale = np.sqrt(np.clip(1.0 - (t / 1.0) ** 2, 0.05, None))  # smaller near the crown/base
    a, b = rng.uniform(0.74, 0.84), rng.uniform(0.60, 0.68)
    angle = rng.uniform(-0.15, 0.15)
    cos, sin = math.cos(angle), math.sin(angle)
    xr = cos * xx - sin * yy
    yr = sin * xx + cos * yy
    rho = np.sqrt((yr / a) ** 2 + (xr / b) ** 2)[None] / scale
    texture = _smooth_noise(rng, shape, max(size // 16, 4))
    fine = _smooth_noise(rng, shape, max(size // 4, 8))
    brain = rho < 1.0
    skull = (rho >= 1.0) & (rho < 1.09 + 0.01 * texture)
    white = brain & (rho + 0.06 * texture < 0.70)
    vent = np.zeros(shape, dtype=bool)
    vent_scale = np.clip(1.0 - (t / 0.55) ** 2, 0.0, None)
    for side in (-1.0, 1.0):
        d = ((xr[None] - side * 0.11 * b) / (0.06 * b)) ** 2 + ((yr[None] + 0.05) / (0.25 * a)) ** 2
        vent |= d < vent_scale
    tissue = np.zeros(shape, dtype=np.uint8)  # 0 bg, 1 skull, 2 grey, 3 white, 4 csf
    tissue[skull], tissue[brain] = 1, 2
    tissue[white], tissue[vent & brain] = 3, 4
    labels = np.zeros(shape, dtype=np.uint8)
    if tumour:
        labels = _tumour_labels(rng, rho, xr, yr, t, a, b, brain & ~vent, enhancing)
    table = np.array(
        [[0.0] * 4, _TISSUE["skull"], _TISSUE["grey"], _TISSUE["white"], _TISSUE["csf"]],
        dtype=np.float32,
    )
    channels = np.stack([lut[tissue] for lut in table.T[:n_channels]])  # (C, Z, H, W)
    for name, where in (("tumour", labels > 0), ("rim", labels == 4)):
        channels[:, where] = np.array(_TISSUE[name][:n_channels], dtype=np.float32)[:, None]
    head = (tissue > 0)[None]
    channels *= np.where(head, 1.0 + 0.05 * texture[None] + 0.03 * fine[None], 1.0)
    bias = 1.0 + 0.12 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)[None] + 0.05 * t
    channels *= bias[None]
    sigma = rng.uniform(0.015, 0.035)
    channels += np.float32(sigma) * rng.standard_normal(channels.shape, dtype=np.float32)
    channels = np.abs(channels) * np.where(head, 1.0, 0.3)  # magnitude images; dim background
    gain = rng.uniform(0.85, 1.1, size=(n_channels, 1, 1, 1)).astype(np.float32)
    gamma = rng.uniform(0.85, 1.15, size=(n_channels, 1, 1, 1)).astype(np.float32)
    channels = np.clip(gain * np.clip(channels, 0.0, 1.0) ** gamma, 0.0, 1.0)
    return Phantom(channels.astype(np.float32), labels)


def _tumour_labels(
    rng: np.random.Generator,
    rho: np.ndarray,
    xr: np.ndarray,
    yr: np.ndarray,
    t: np.ndarray,
    a: float,
    b: float,
    allowed: np.ndarray,
    enhancing: bool,
) -> np.ndarray:
    """BraTS-style labels of one irregular tumour inside `allowed` (a run of slices)."""
    z = t.shape[0]
    angle = rng.uniform(0, 2 * math.pi)
    radius = rng.uniform(0.25, 0.55)
    cy, cx = radius * a * math.sin(angle), radius * b * math.cos(angle)
    size = rng.uniform(0.10, 0.22)
    run = int(rng.integers(max(2, z // 6), max(3, z // 2) + 1))
    centre = int(rng.integers(run // 2, max(run // 2 + 1, z - run // 2)))
    zspan = (run / 2) * (1.7 / max(z - 1, 1))
    tz = float(t[centre, 0, 0])
    # Two overlapping lobes with a noisy boundary: real gliomas are rarely ellipses.
    lumpy = _smooth_noise(rng, rho.shape, 10)
    aspect = rng.uniform(0.7, 1.3)
    d = np.sqrt(((xr[None] - cx) / size) ** 2 + ((yr[None] - cy) / (size * aspect)) ** 2)
    lobe_angle = rng.uniform(0, 2 * math.pi)
    lx, ly = cx + 0.8 * size * math.cos(lobe_angle), cy + 0.8 * size * math.sin(lobe_angle)
    lobe = np.sqrt(((xr[None] - lx) / (0.6 * size)) ** 2 + ((yr[None] - ly) / (0.6 * size)) ** 2)
    d = np.minimum(d, lobe)
    d = np.sqrt(d**2 + ((t - tz) / zspan) ** 2)
    d = d * (1.0 + 0.35 * lumpy)
    labels = np.zeros(rho.shape, dtype=np.uint8)
    labels[(d < 1.0) & allowed] = 2
    labels[(d < 0.55) & allowed] = 1
    if enhancing:
        labels[(d >= 0.45) & (d < 0.62) & allowed] = 4
    return labels


def _write_kaggle(out: Path, name: str, phantom: Phantom) -> None:
    folder = out / name
    folder.mkdir(parents=True)
    rgb = np.round(np.moveaxis(phantom.channels[:3], 0, -1) * 255.0).astype(np.uint8)
    masks = np.where(phantom.labels > 0, 255, 0).astype(np.uint8)
    for k in range(rgb.shape[0]):
        tifffile.imwrite(folder / f"{name}_{k + 1}.tif", rgb[k], photometric="rgb")
        tifffile.imwrite(folder / f"{name}_{k + 1}_mask.tif", masks[k], photometric="minisblack")


def _write_nifti(
    out: Path, name: str, phantom: Phantom, rng: np.random.Generator, codes: tuple[str, ...]
) -> None:
    folder = out / name
    folder.mkdir(parents=True)
    size, depth = phantom.channels.shape[2], phantom.channels.shape[1]
    canonical_affine = np.diag([*SPACING_MM, 1.0])
    canonical_affine[:3, 3] = [-size * SPACING_MM[0] / 2, -size * SPACING_MM[1] / 2, -depth * 1.5]
    transform = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), ornt.axcodes2ornt(codes))
    shape = (size, size, depth)
    affine = canonical_affine @ ornt.inv_ornt_aff(transform, shape)
    volumes = {"t1": 0, "flair": 1, "t1ce": 2, "t2": 3}
    for suffix, channel in volumes.items():
        canonical = np.transpose(phantom.channels[channel], (1, 2, 0))  # (X, Y, Z)
        raw = np.round(canonical * rng.uniform(800, 3000)).astype(np.int16)
        _save(ornt.apply_orientation(raw, transform), affine, folder / f"{name}_{suffix}.nii.gz")
    labels = np.transpose(phantom.labels, (1, 2, 0))
    _save(ornt.apply_orientation(labels, transform), affine, folder / f"{name}_seg.nii.gz")


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def start_archive(
    out: str | Path, patients: int, slices: int, image_size: int, seed: int
) -> tuple[Path, set[int]]:
    """Check the sizes, create the empty archive root and draw the tumour-free patients.

    Shared by every synthetic format, so the same seed gives the same phantoms in each.

    Returns:
        `(root, tumour_free)`: indices of the round(patients / 4) patients without tumour (at
        least one patient keeps a tumour).

    Raises:
        ValueError: sizes too small. FileExistsError: `out` exists and is not an empty folder.
    """
    if patients < 1 or slices < 1 or image_size < 16:
        raise ValueError("need patients >= 1, slices >= 1 and image_size >= 16")
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not an empty folder")
    root.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng([seed, 7]).permutation(patients)
    n_free = min(round(patients / 4), patients - 1)
    return root, {int(i) for i in order[:n_free]}


def write_synthetic_archive(
    out: str | Path,
    patients: int,
    fmt: str,
    seed: int,
    slices: int = 24,
    image_size: int = 256,
    prefix: str = "SYN",
) -> Path:
    """Write a synthetic archive of phantom patients.

    Args:
        out: output folder (created; must be empty or absent).
        patients: number of patients (>= 1); round(patients / 4) of them are tumour-free
            (at least one tumour patient always).
        fmt: "kaggle" or "nifti".
        seed: seed; the same arguments always give the same pixels.
        slices: axial slices per patient.
        image_size: in-plane side in pixels.
        prefix: patient keys are `<prefix>_0001`, `<prefix>_0002`, ...

    Returns:
        The archive root `out`.
    """
    if fmt not in ("kaggle", "nifti"):
        raise ValueError(f"fmt must be 'kaggle' or 'nifti', got {fmt!r}")
    root, tumour_free = start_archive(out, patients, slices, image_size, seed)
    names = [f"{prefix}_{i + 1:04d}" for i in range(patients)]
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, i])
        phantom = make_phantom(
            rng, slices, image_size, i not in tumour_free, bool(i % 2), 3 if fmt == "kaggle" else 4
        )
        if fmt == "kaggle":
            _write_kaggle(root, name, phantom)
        else:
            _write_nifti(root, name, phantom, rng, _ORIENTATIONS[i % len(_ORIENTATIONS)])
    if fmt == "kaggle":
        with open(root / "data.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Patient", "synthetic_tumour"])
            writer.writerows([name, int(i not in tumour_free)] for i, name in enumerate(names))
    return root


def cli_synth(args: argparse.Namespace) -> int:
    """`mri-triage synth OUT --patients N --format kaggle|nifti|dicom --seed S`."""
    try:
        if args.format == "dicom":
            from pipeline.io.synthetic_dicom import write_synthetic_dicom_archive

            root = write_synthetic_dicom_archive(
                args.out, args.patients, args.seed, args.slices, args.image_size
            )
        else:
            root = write_synthetic_archive(
                args.out, args.patients, args.format, args.seed, args.slices, args.image_size
            )
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    free = min(round(args.patients / 4), args.patients - 1)
    print(
        f"wrote {args.patients} synthetic patients ({free} tumour-free), {args.slices} slices "
        f"of {args.image_size} px, {args.format} layout, to {os.fspath(root)}"
    )
    return 0
