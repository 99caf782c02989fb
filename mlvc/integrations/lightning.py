"""PyTorch Lightning: :class:`MlvcLogger` records a ``Trainer`` run as an mlvc experiment.

::

    from mlvc.integrations.lightning import MlvcLogger

    checkpoint = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2)
    trainer = Trainer(logger=MlvcLogger(), callbacks=[checkpoint])
    trainer.fit(model, data)

Metrics go to ``run.log`` (at Lightning's global step), the module's (and datamodule's)
hyperparameters become the experiment's params, and every file a ``ModelCheckpoint`` saves is
recorded as a checkpoint at its global step, with the metrics logged so far and the monitored
metric as primary (``mode="min"``: minimize), so ``EXP@best`` is the best saved model. The
run ends with ``fit``/``test`` (``failed`` with the exception if training raised,
``interrupted`` on Ctrl-C); a later ``test`` with the same logger resumes the experiment.
Requires the ``lightning`` package (``pip install "mlvc[lightning]"``).
"""

from __future__ import annotations

import time
from argparse import Namespace
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment  # type: ignore[attr-defined]
from lightning.pytorch.utilities import rank_zero_only

from mlvc.integrations._runs import LazyRun, RunHolder
from mlvc.tracking.run import Run

__all__ = ["MlvcLogger"]


class MlvcLogger(Logger):
    """A Lightning logger that records into mlvc.

    Args:
        name: The experiment's name (default: the script's name).
        run: Record into this run instead of starting one (it is not closed here).
        log_checkpoints: Record each file a ``ModelCheckpoint`` saves.
        version: Lightning's version label (names the checkpoint directory; default: the
            start time).
        **track_options: Passed to :func:`mlvc.track` (``repository``, ``params``,
            ``strict``, ``exit_timeout``...).
    """

    def __init__(
        self,
        name: str | None = None,
        run: Run | None = None,
        log_checkpoints: bool = True,
        version: str | None = None,
        **track_options: Any,
    ) -> None:
        super().__init__()
        self._name = name
        self._holder = RunHolder(run, {"name": name, **track_options})
        self._log_checkpoints = log_checkpoints
        self._version = version or time.strftime("%Y%m%d-%H%M%S")
        self._metrics: dict[str, Any] = {}
        self._last_step: int | None = None
        self._recorded: set[tuple[str, int]] = set()

    @property
    def name(self) -> str:
        """The experiment's name (``mlvc`` when it defaults to the script's)."""
        return self._name or "mlvc"

    @property
    def version(self) -> str:
        """A label for this run's checkpoint directory."""
        return self._version

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The :class:`mlvc.Run`; it starts when first used, with the hyperparameters."""
        return LazyRun(self._holder)

    @property
    def experiment_id(self) -> str | None:
        """The id of the experiment recorded (None before the run started)."""
        return self._holder.experiment_id

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        """Record hyperparameters as the experiment's params (before the run starts)."""
        values = vars(params) if isinstance(params, Namespace) else dict(params)
        self._holder.add_params(values)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Append metric values to the run's series at ``step``."""
        self._metrics.update(metrics)
        if step is not None:
            self._last_step = int(step)
        self._holder.get().log(metrics, step=step)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Record the file a ``ModelCheckpoint`` just saved, its monitored metric as primary."""
        if not self._log_checkpoints:
            return
        cb = checkpoint_callback
        path = getattr(cb, "_last_checkpoint_saved", "") or cb.last_model_path
        step = getattr(cb, "_last_global_step_saved", None)
        step = int(step) if step is not None else (self._last_step or 0)
        if not path or (path, step) in self._recorded:
            return
        if any(s == step for _, s in self._recorded) and path == cb.last_model_path:
            return  # last.ckpt beside the top-k file of the same step: the same model
        self._recorded.add((path, step))
        metrics = dict(self._metrics)
        primary = None
        if cb.monitor:
            score = cb.best_k_models.get(path)
            if score is not None:
                metrics[cb.monitor] = score
            primary = (cb.monitor, "maximize" if cb.mode == "max" else "minimize")
        self._holder.get().checkpoint(path=path, step=step, metrics=metrics, primary_metric=primary)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """End the run: ``success`` stopped, ``failed`` with the exception being handled."""
        self._holder.end(failed=status != "success")
