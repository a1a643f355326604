"""Post-processing: thresholding and small-component removal, with a property test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from pipeline.triage.postprocess import (
    fill_holes,
    postprocess,
    remove_small_components,
    threshold_probabilities,
)


def test_threshold_at_half_inclusive() -> None:
    prob = np.array([[[0.49, 0.5], [0.51, 1.0]]], dtype=np.float32)[..., None]
    assert threshold_probabilities(prob).tolist() == [[[False, True], [True, True]]]


def test_drops_small_keeps_large() -> None:
    prob = np.zeros((2, 32, 32), dtype=np.float32)
    prob[0, 2:4, 2:4] = 0.9  # 4 px speck
    prob[0, 10:20, 10:20] = 0.8  # 100 px lesion
    prob[1, 5, 5] = 0.99  # lone pixel: slice becomes empty
    out = postprocess(prob, min_component=10)
    assert out[0, 10:20, 10:20].all()
    assert not out[0, 2:4, 2:4].any()
    assert out[0].sum() == 100
    assert not out[1].any()
    assert postprocess(prob, min_component=0).sum() == 105


def test_diagonal_pixels_are_one_component() -> None:
    masks = np.zeros((1, 8, 8), dtype=bool)
    for i in range(5):
        masks[0, i, i] = True
    assert remove_small_components(masks, 5).sum() == 5
    assert remove_small_components(masks, 6).sum() == 0


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        threshold_probabilities(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="min_size"):
        remove_small_components(np.zeros((1, 4, 4), dtype=bool), -1)


@settings(max_examples=60, deadline=None)
@given(
    prob=arrays(np.float32, (2, 12, 12), elements=st.floats(0, 1, width=32)),
    min_component=st.integers(0, 30),
)
def test_output_is_subset_of_thresholded(prob: np.ndarray, min_component: int) -> None:
    out = postprocess(prob, min_component=min_component)
    thresholded = prob >= 0.5
    assert out.shape == thresholded.shape
    assert not np.any(out & ~thresholded)
    # Idempotent: post-processing a post-processed mask changes nothing.
    again = remove_small_components(out, min_component)
    assert np.array_equal(again, out)


def test_fill_holes_closes_a_ring_and_leaves_open_shapes() -> None:
    m = np.zeros((3, 16, 16), dtype=bool)
    m[0, 2:10, 2:10] = True
    m[0, 4:8, 4:8] = False  # a bright rim around a dark core: the core is tumour too
    m[1, 3:12, 3:6] = True  # a C shape: its inside reaches the outside, nothing to fill
    m[1, 3:6, 3:12] = True
    m[1, 9:12, 3:12] = True
    m[2, 0:5, 0:5] = True
    m[2, 0:3, 0:3] = False  # a notch open to the slice's border is background, not a hole
    out = fill_holes(m)
    assert out[0, 2:10, 2:10].all() and out[0].sum() == 64
    assert (out[1] == m[1]).all()
    assert (out[2] == m[2]).all()
    assert (out >= m).all()  # never removes
    rng = np.random.default_rng(0)  # the same holes as scipy's fill, on random blobs
    blobs = rng.random((20, 24, 24)) < 0.55
    want = np.stack([ndimage.binary_fill_holes(b) for b in blobs])
    assert (fill_holes(blobs) == want).all() and (want != blobs).any()
    assert not fill_holes(np.zeros((2, 8, 8), bool)).any()
    with pytest.raises(ValueError, match="expected"):
        fill_holes(np.zeros((8, 8), bool))


def test_triage_fills_holes_unless_told_not_to() -> None:
    from types import SimpleNamespace

    from pipeline.triage.inference import PatientWork, _postprocess
    from pipeline.triage.settings import TriageSettings

    prob = np.zeros((2, 64, 64), dtype=bool)
    prob[0, 10:50, 10:50] = True
    prob[0, 20:40, 20:40] = False  # a 400-px hole inside a 1600-px square
    ps = SimpleNamespace(slices=[0, 1, 2], native_hw=(64, 64))
    flagged = np.array([True, False, True])
    work = PatientWork(ps=ps, x=None, flagged=flagged, prob=prob)
    off = _postprocess(work, TriageSettings(lone_slice_area=0, min_volume=0, fill_holes=False))
    on = _postprocess(work, TriageSettings(lone_slice_area=0, min_volume=0))
    assert off[0].sum() == 1600 - 400 and on[0].sum() == 1600
    assert not on[1].any() and not on[2].any()
    # Outputs written before the option existed had no filling: their keys stay those of "off".
    assert "fill_holes" not in TriageSettings(fill_holes=False).key_part()
    assert TriageSettings().key_part()["fill_holes"] is True
