"""tf.data pipelines and the data plan: shapes, paired augmentation, class weights, split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.io.preprocess import PreprocessConfig
from pipeline.io.synthetic import write_synthetic_archive
from pipeline.learn.datasets import (
    SliceArrays,
    class_weights,
    load_slices,
    make_dataset,
    split_hash,
)
from pipeline.learn.training import TrainConfig, TrainingDataError, plan_data


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_archive(
        tmp_path_factory.mktemp("syn") / "a", 8, "kaggle", seed=1, slices=10, image_size=64
    )


def test_plan_is_reproducible_and_never_leaks(archive: Path) -> None:
    a, b = plan_data(str(archive), seed=3), plan_data(str(archive), seed=3)
    assert a.splits == b.splits and a.fingerprint == b.fingerprint
    members = [set(v) for v in a.splits.values()]
    assert sum(map(len, members)) == len(set().union(*members)) == 8
    assert a.counts["train_tumour_slices"] > 0 and a.counts["val_tumour_slices"] > 0
    assert split_hash(a.splits) == split_hash(b.splits)
    assert not any(p in split_hash(a.splits) for p in a.splits["train"])


def test_load_slices_and_class_weights(archive: Path) -> None:
    plan = plan_data(str(archive))
    arrays = load_slices(plan.table, plan.splits["train"], PreprocessConfig(image_size=32))
    n = plan.counts["train_slices"]
    assert arrays.images.shape == (n, 32, 32, 3) and arrays.images.dtype == np.uint8
    assert arrays.masks.shape == (n, 32, 32) and arrays.masks.dtype == bool
    assert arrays.labels.sum() == plan.counts["train_tumour_slices"]
    assert set(arrays.patients) == set(plan.splits["train"])
    w = class_weights(arrays.labels)
    # weighted class totals are equal: the classifier sees a balanced loss
    assert w[0] * np.sum(arrays.labels == 0) == pytest.approx(w[1] * np.sum(arrays.labels == 1))
    assert class_weights(np.zeros(4)) == {0: 0.5, 1: 1.0}


def test_validation_slices_are_triage_s_own_float_inputs(archive: Path) -> None:
    """`exact=True` keeps the float inputs triage computes (operating point and checkpoint are
    chosen on them); the training copy is the same values rounded to uint8 levels."""
    from pipeline.io.preprocess import patient_inputs
    from pipeline.io.slices import load_patient

    plan = plan_data(str(archive))
    config = PreprocessConfig(image_size=32, input_mode="flair25d", normalize="volume")
    patient = plan.splits["val"][0]
    exact = load_slices(plan.table, [patient], config, exact=True)
    rounded = load_slices(plan.table, [patient], config)
    rows = plan.table[plan.table["patient"] == patient]
    triage = patient_inputs(load_patient(rows, config).images, config)
    assert exact.images.dtype == np.float32
    np.testing.assert_array_equal(exact.images, triage)
    np.testing.assert_array_equal(rounded.images, np.round(triage * 255.0).astype(np.uint8))
    assert np.abs(exact.images - rounded.float_images()).max() > 0  # the rounding is real
    fed = np.concatenate(
        [x.numpy() for x, _ in make_dataset(exact, "classifier", 4, training=False)]
    )
    np.testing.assert_array_equal(fed, triage)  # the pipeline passes them through untouched


def _blob_arrays(n: int = 16, size: int = 48) -> SliceArrays:
    """Slices whose FLAIR channel is exactly the (off-centre, asymmetric) mask."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([((yy - 14) ** 2 / 36 + (xx - 30 - i % 3) ** 2 / 9) <= 1 for i in range(n)])
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 1] = masks * 255
    return SliceArrays(images, masks, np.ones(n, np.int32), ["p"] * n)


@pytest.mark.parametrize("augment", ["standard", "strong"])
def test_augmentation_moves_image_and_mask_together(augment: str) -> None:
    arrays = _blob_arrays()
    ds = make_dataset(arrays, "segmenter", 8, training=True, seed=5, augment=augment)
    moved = 0
    for x, y in ds:
        x, y = x.numpy(), y.numpy()[..., 0]
        assert x.shape == (8, 48, 48, 3) and y.shape == (8, 48, 48)
        assert x.min() >= 0.0 and x.max() <= 1.0 and set(np.unique(y)) <= {0.0, 1.0}
        for img, mask in zip(x[..., 1], y, strict=True):
            bright = img > img.mean() + 0.5 * (img.max() - img.mean())
            inter = np.sum(bright & (mask > 0))
            assert 2 * inter / (bright.sum() + mask.sum()) > 0.8
        moved += int(np.sum(y != arrays.masks[: len(y)]) > 0)
    assert moved > 0  # something was actually augmented


def test_strong_augmentation_scales_and_bends_intensities() -> None:
    """`strong` zooms (the mask's area changes with the image's) and its gamma is not an affine
    change of the levels; the background stays black. `standard` keeps areas."""
    import tensorflow as tf

    from pipeline.learn.datasets import _strong_intensity

    arrays = _blob_arrays(64)
    area = arrays.masks[0].sum()

    def areas(augment: str) -> np.ndarray:
        ds = make_dataset(arrays, "segmenter", 64, training=True, seed=2, augment=augment)
        _, y = next(iter(ds))
        return y.numpy().sum(axis=(1, 2, 3)) / area

    standard, strong = areas("standard"), areas("strong")
    assert standard.min() > 0.85 and standard.max() < 1.15
    assert strong.min() < 0.85 and strong.max() > 1.15  # zoom 0.85-1.15: area x 0.72-1.32
    levels = np.zeros((64, 8, 8, 3), np.float32)
    levels[:, :, 2:4], levels[:, :, 4:6], levels[:, :, 6:] = 0.2, 0.5, 0.8
    out = _strong_intensity(tf.constant(levels), tf.constant(64), seed=3).numpy()
    assert np.all(out[:, :, :2] == 0.0)  # background untouched (no noise outside the head)
    bands = ((2, 4), (4, 6), (6, 8))
    low, mid, high = (np.median(out[:, :, a:b], axis=(1, 2, 3)) for a, b in bands)
    bend = (high - mid) / (mid - low)  # 1.0 for any affine change of 0.2 / 0.5 / 0.8
    assert np.sum(np.abs(bend - 1.0) > 0.05) >= 10 and np.sum(np.abs(bend - 1.0) < 1e-3) >= 10
    with pytest.raises(ValueError, match="augment"):
        make_dataset(arrays, "segmenter", 4, training=True, augment="wild")


def test_eval_dataset_is_unchanged_and_ordered() -> None:
    arrays = _blob_arrays(6)
    x, y = next(iter(make_dataset(arrays, "classifier", 6, training=False)))
    np.testing.assert_allclose(x.numpy(), arrays.float_images())
    assert y.numpy().tolist() == [1] * 6
    with pytest.raises(ValueError, match="task"):
        make_dataset(arrays, "detector", 2, training=False)


def _zero_masks(root: Path) -> None:
    for path in root.rglob("*_mask.tif"):
        tifffile.imwrite(path, np.zeros((64, 64), np.uint8))


def test_unusable_archives_stop_with_clear_messages(tmp_path: Path) -> None:
    empty = write_synthetic_archive(tmp_path / "e", 4, "kaggle", seed=0, slices=4, image_size=64)
    _zero_masks(empty)
    with pytest.raises(TrainingDataError, match="no tumour slices"):
        plan_data(str(empty))
    two = write_synthetic_archive(tmp_path / "t", 2, "kaggle", seed=0, slices=4, image_size=64)
    with pytest.raises(TrainingDataError, match="cannot split patients"):
        plan_data(str(two))


def test_config_defaults_follow_the_paper() -> None:
    c = TrainConfig.create("classifier", "a", "resnet50", weights="none", epochs=None)
    assert (c.epochs, c.lr, c.weights, c.image_size) == (15, 1e-4, None, 256)
    r = TrainConfig.create("segmenter", "a", "resunet")
    assert (r.epochs, r.lr, r.loss) == (30, 1e-5, "bce_dice")
    p = TrainConfig.create("segmenter", "a", "resunet_pp", lr=3e-4)
    assert (p.lr, p.loss) == (3e-4, "dice")
    with pytest.raises(ValueError, match="segmenter model"):
        TrainConfig.create("segmenter", "a", "resnet50")


def test_unreadable_files_are_skipped_and_counted(tmp_path: Path) -> None:
    root = write_synthetic_archive(tmp_path / "c", 4, "kaggle", seed=0, slices=4, image_size=64)
    broken = sorted(root.rglob("*_2.tif"))[0]
    broken.write_bytes(b"not a tif")
    plan = plan_data(str(root))
    assert plan.skipped_files >= 1
    assert str(broken) not in set(plan.table["image_path"])
    arrays = load_slices(plan.table, plan.splits["train"], PreprocessConfig(image_size=32))
    assert len(arrays) == plan.counts["train_slices"]


def test_modality_dropout_puts_flair_where_a_sequence_is_missing() -> None:
    """A share p of the slices get FLAIR in place of pre-contrast, post-contrast or both (a third
    each); FLAIR itself and the other slices are untouched; p = 0 changes nothing."""
    import tensorflow as tf

    from pipeline.learn.datasets import _drop_modalities

    n = 3000
    x = np.zeros((n, 4, 4, 3), np.float32)
    x[..., 0], x[..., 1], x[..., 2] = 0.2, 0.5, 0.8
    out = _drop_modalities(tf.constant(x), 0.3, seed=4).numpy()
    np.testing.assert_array_equal(out[..., 1], x[..., 1])
    pre = np.all(out[..., 0] == 0.5, axis=(1, 2))
    post = np.all(out[..., 2] == 0.5, axis=(1, 2))
    assert np.all(out[~pre][..., 0] == 0.2) and np.all(out[~post][..., 2] == 0.8)
    shares = np.array([np.mean(pre & ~post), np.mean(~pre & post), np.mean(pre & post)])
    assert abs(shares.sum() - 0.3) < 0.03 and np.all(np.abs(shares - 0.1) < 0.02)
    np.testing.assert_array_equal(_drop_modalities(tf.constant(x), 0.0, seed=4).numpy(), x)
    with pytest.raises(ValueError, match="modality_dropout"):
        make_dataset(_blob_arrays(4), "segmenter", 4, training=True, modality_dropout=1.0)
    with pytest.raises(ValueError, match=r"input_mode .rgb. or .adaptive."):
        TrainConfig.create(
            "segmenter", "a", "resunet", preset="cpu", modality_dropout=0.3
        )  # cpu's flair25d: the channels are FLAIR of three slices, no sequence to drop
    config = TrainConfig.create(
        "segmenter", "a", "resunet", preset="cpu", modality_dropout=0.3, input_mode="rgb"
    )
    assert config.modality_dropout == 0.3


def test_adaptive_training_shows_a_share_of_slices_in_their_flair_form(tmp_path: Path) -> None:
    """ "adaptive" training slices keep FLAIR of k-1 and k+1 (`neighbours=True`);
    `modality_dropout` p then shows a share p in their FLAIR form (FLAIR k-1, k, k+1), the rest
    as triage feeds them."""
    import tensorflow as tf

    from pipeline.learn.datasets import _flair_form

    root = write_synthetic_archive(tmp_path / "a", 4, "kaggle", seed=0, slices=5, image_size=64)
    plan = plan_data(str(root))
    config = PreprocessConfig(image_size=32, input_mode="adaptive", normalize="volume")
    plain = load_slices(plan.table, plan.splits["train"], config)
    both = load_slices(plan.table, plan.splits["train"], config, neighbours=True)
    assert plain.images.shape[-1] == 3 and both.images.shape[-1] == 5
    np.testing.assert_array_equal(both.images[..., :3], plain.images)
    np.testing.assert_array_equal(both.images[1:5, ..., 3], both.images[0:4, ..., 1])  # FLAIR k-1
    np.testing.assert_array_equal(both.images[0:4, ..., 4], both.images[1:5, ..., 1])  # FLAIR k+1
    with pytest.raises(ValueError, match="adaptive"):
        load_slices(plan.table, plan.splits["train"], PreprocessConfig(32), neighbours=True)

    n = 2000
    x = np.zeros((n, 2, 2, 5), np.float32)
    x[..., 0], x[..., 1], x[..., 2], x[..., 3], x[..., 4] = 0.1, 0.5, 0.9, 0.4, 0.6
    out = _flair_form(tf.constant(x), 0.4, seed=2).numpy()
    assert out.shape == (n, 2, 2, 3)
    np.testing.assert_array_equal(out[..., 1], x[..., 1])
    alone = np.all(out[..., 0] == 0.4, axis=(1, 2))
    np.testing.assert_array_equal(alone, np.all(out[..., 2] == 0.6, axis=(1, 2)))
    assert np.all(out[~alone][..., 0] == 0.1) and np.all(out[~alone][..., 2] == 0.9)
    assert abs(alone.mean() - 0.4) < 0.04
    np.testing.assert_array_equal(_flair_form(tf.constant(x), 0.0, seed=2).numpy(), x[..., :3])
    ds = make_dataset(both, "segmenter", 4, training=True, seed=1, modality_dropout=0.5)
    assert next(iter(ds))[0].shape[-1] == 3
    with pytest.raises(ValueError, match="training batches only"):
        make_dataset(both, "segmenter", 4, training=False)
    config = TrainConfig.create(
        "segmenter", "a", "resunet", preset="cpu", modality_dropout=0.5, input_mode="adaptive"
    )
    assert (config.input_mode, config.modality_dropout) == ("adaptive", 0.5)
