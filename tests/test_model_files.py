"""Saved models hold weights and architecture, not optimizer state (a third of the file size)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from models import build_resunet
from pipeline.io.preprocess import PreprocessConfig
from pipeline.tracking import load_model, save_local_model


def test_saved_model_has_no_optimizer_state(tmp_path: Path) -> None:
    model = build_resunet((32, 32, 3), filters=(4, 8, 16, 32, 64))
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    model.fit(x, (x[..., :1] > 0.5).astype("float32"), epochs=1, verbose=0)
    model.save(tmp_path / "full.keras")
    path = save_local_model(model, tmp_path / "slim", "segmenter", PreprocessConfig(32))
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as h5:
        assert "optimizer" not in h5
    assert path.stat().st_size < 0.6 * (tmp_path / "full.keras").stat().st_size
    loaded = load_model(str(path))
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0))
    assert model.optimizer is not None  # the caller's model keeps training state
