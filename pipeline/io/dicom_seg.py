"""The predicted mask as a DICOM Segmentation (highdicom) over the series it was predicted on.

The SEG references every source image (one frame per source frame, same positions and
orientation), so a viewer overlays it on the series. It belongs to the source's study and
therefore carries the source's patient and study modules, as any DICOM object of that study must:
it is written only to the output folder and never logged to MLflow (`pipeline.tracking` skips
`.dcm` files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Segment coded as SNOMED CT "Morphologically altered structure" / "Neoplasm".
SEGMENT_LABEL = "tumour (predicted)"


def _segment_description() -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from pipeline import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="mri-triage", version=str(__version__), family=codes.cid7162.ArtificialIntelligence
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=hd.sr.CodedConcept(
            "49755003", "SCT", "Morphologically Altered Structure"
        ),
        segmented_property_type=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


#: Type 2 attributes highdicom copies from the source; absent ones are set empty (in memory only).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "StudyID", "AccessionNumber", "ReferringPhysicianName")  # fmt: skip


def _read_source(path: str) -> Any:
    import pydicom

    ds = pydicom.dcmread(path)
    for key in _TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    return ds


def _frames_by_source(native: np.ndarray, source: Any) -> tuple[list[Any], np.ndarray]:
    """Source datasets and the SEG pixel array in the order highdicom expects.

    Single-frame series: one source dataset per sorted slice, frame k = slice k. Multi-frame:
    the one source dataset, frames in the file's own frame order.
    """
    frames = source.geometry.frames
    planes = np.transpose(np.asarray(native) > 0, (2, 1, 0))  # (slices, rows, cols)
    if frames[0].frame is None:
        datasets = [_read_source(f.path) for f in frames]
        return datasets, planes.astype(np.uint8)
    ds = _read_source(frames[0].path)
    out = np.zeros((int(ds.NumberOfFrames), *planes.shape[1:]), dtype=np.uint8)
    for k, f in enumerate(frames):
        out[f.frame] = planes[k]
    return [ds], out


def write_dicom_seg(native_mask: np.ndarray, source: Any, path: str | Path) -> Path:
    """Write a BINARY DICOM Segmentation of `native_mask` referencing the source series.

    Args:
        native_mask: `(columns, rows, slices)` bool on the series' stored grid (see
            `pipeline.io.dicom`; `NiftiGeometry.to_native` of a canonical mask gives it).
        source: the `pipeline.io.dicom_case.DicomSource` the mask was predicted on.
        path: output `.dcm` path (written to a temporary name, then renamed).

    Returns:
        `path`.
    """
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if tuple(native_mask.shape) != source.geometry.shape:
        raise ValueError(
            f"mask {native_mask.shape} differs from the series {source.geometry.shape}"
        )
    datasets, pixels = _frames_by_source(native_mask, source)
    number = source.header.number
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description()],
        series_instance_uid=generate_uid(),
        series_number=(number or 0) + 9000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="mri-triage",
        manufacturer_model_name="mri-triage (research use only)",
        software_versions="mri-triage",
        device_serial_number="0",
        series_description="mri-triage tumour (research use only)",
        content_description="Predicted tumour; research use only, not a medical device",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
    )
    out = Path(path)
    from pipeline.io.manifest import atomic_write

    atomic_write(out, seg.save_as, durable=False)  # staged per patient
    return out
