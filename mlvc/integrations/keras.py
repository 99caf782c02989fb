"""Keras 3: :class:`MlvcCallback` records ``model.fit`` with mlvc (any backend).

::

    from mlvc.integrations.keras import MlvcCallback

    model.fit(x, y, validation_split=0.2, epochs=5,
              callbacks=[MlvcCallback(save=True, monitor="val_loss", params={"lr": 1e-3})])

Each epoch's logs go to ``run.log`` at the epoch (from 0); the fit's ``epochs``/``steps`` and
the optimizer's config (under ``optimizer.``) join the params. With ``save=True`` the model is
saved to ``filepath`` (formatted with ``epoch`` (from 1) and the logs, as Keras's
``ModelCheckpoint`` does) at each epoch end, or only when ``monitor`` improves with
``save_best_only=True``, and recorded as a checkpoint with ``monitor`` as primary metric. The
run ends with ``fit``. Requires ``keras`` 3 (``pip install "mlvc[keras]"``).
"""

from __future__ import annotations

import math
from typing import Any

import keras

from mlvc.integrations._runs import RunHolder
from mlvc.tracking.run import Run

__all__ = ["MlvcCallback"]


class MlvcCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """A Keras callback that records into mlvc.

    Args:
        run: Record into this run instead of starting one (it is not closed here).
        save: Save and record the model at epoch ends.
        monitor: The metric ranking checkpoints (``val_loss``...).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy-like names).
        save_best_only: Save only when ``monitor`` improved.
        filepath: Where to save (``.keras``, or ``.weights.h5`` for the weights only).
        **track_options: Passed to :func:`mlvc.track` (``repository``, ``name``,
            ``params``...).
    """

    def __init__(
        self,
        run: Run | None = None,
        save: bool = False,
        monitor: str = "val_loss",
        mode: str = "auto",
        save_best_only: bool = False,
        filepath: str = "model.keras",
        **track_options: Any,
    ) -> None:
        super().__init__()
        self._holder = RunHolder(run, track_options)
        self._save = save
        self._monitor = monitor
        if mode == "auto":
            mode = "max" if "acc" in monitor or monitor.endswith("auc") else "min"
        self._goal = "maximize" if mode == "max" else "minimize"
        self._best_only = save_best_only
        self._filepath = filepath
        self._best: float | None = None

    @property
    def experiment_id(self) -> str | None:
        """The id of the experiment recorded (None before training started)."""
        return self._holder.experiment_id

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Start the run with the fit's settings and the optimizer's config as params."""
        params: dict[str, Any] = {
            k: v for k, v in (self.params or {}).items() if k in ("epochs", "steps")
        }
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            params["optimizer"] = {"name": type(optimizer).__name__, **optimizer.get_config()}
        self._holder.add_params(params)
        self._holder.get()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Log the epoch's metrics; save and record the model if asked."""
        logs = dict(logs or {})
        run = self._holder.get()
        run.log(logs, step=epoch)
        if not self._save:
            return
        value = logs.get(self._monitor)
        current = float(value) if value is not None else None
        if self._best_only:
            if current is None or math.isnan(current):
                return
            better = self._best is None or (
                current > self._best if self._goal == "maximize" else current < self._best
            )
            if not better:
                return
        if current is not None and not math.isnan(current):
            if self._best is None or (
                current > self._best if self._goal == "maximize" else current < self._best
            ):
                self._best = current
        path = self._filepath.format(epoch=epoch + 1, **logs)
        if path.endswith(".weights.h5"):
            self.model.save_weights(path)
        else:
            self.model.save(path)
        primary = (self._monitor, self._goal) if current is not None else None
        run.checkpoint(path=path, step=epoch, metrics=logs, primary_metric=primary)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """End the run."""
        self._holder.end()
