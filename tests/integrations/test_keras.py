"""Keras 3 (torch backend): a real fit on a tiny CPU model, recorded by MlvcCallback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mlvc

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported with another backend", allow_module_level=True)

from mlvc.integrations.keras import MlvcCallback  # noqa: E402


def test_fit_logs_epochs_and_records_the_best_saved_model(project: Path) -> None:
    import numpy as np

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
    callback = MlvcCallback(save=True, monitor="val_loss", name="keras-tiny")
    history = model.fit(
        x, y, validation_split=0.25, epochs=4, batch_size=16, verbose=0, callbacks=[callback]
    )
    exp = mlvc.experiments.get(callback.experiment_id)  # type: ignore[arg-type]
    assert exp.status == "stopped" and exp.name == "keras-tiny"
    assert exp.params["epochs"] == 4
    assert exp.params["optimizer.learning_rate"] == pytest.approx(0.05)
    losses = [v for _, v in exp.metrics("val_loss")]
    assert losses == pytest.approx(history.history["val_loss"])
    assert [c.step for c in exp.checkpoints] == [0, 1, 2, 3]
    best = exp.best()
    assert best is not None
    val = history.history["val_loss"]
    assert best.step == min(range(4), key=lambda i: val[i])
    with best.open("model.keras") as f:
        assert f.read()[:2] == b"PK"  # a .keras file is a zip archive
