"""Hugging Face Transformers: :class:`MlvcCallback` records a ``Trainer`` run with mlvc.

::

    from mlvc.integrations.transformers import MlvcCallback

    args = TrainingArguments("out", eval_strategy="epoch", save_strategy="epoch",
                             metric_for_best_model="loss", greater_is_better=False)
    Trainer(model, args, train_dataset=..., eval_dataset=..., callbacks=[MlvcCallback()])

``on_log`` values go to ``run.log`` at the global step; the ``TrainingArguments`` (and the
model's config, under ``model.``) are the params; each ``checkpoint-N`` directory the Trainer
saves is recorded as a checkpoint at step N with the latest logged metrics, the primary metric
being ``metric_for_best_model`` (``eval_`` prefixed as the Trainer does; ``eval_loss`` when
``load_best_model_at_end`` names none), maximized if ``greater_is_better``. The run ends with
training. Requires ``transformers`` and ``accelerate`` (``pip install "mlvc[transformers]"``).
"""

from __future__ import annotations

import os
from numbers import Number
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mlvc.integrations._runs import RunHolder
from mlvc.tracking.run import Run

__all__ = ["MlvcCallback"]


def _primary(args: TrainingArguments) -> tuple[str, str] | None:
    name = args.metric_for_best_model
    if name is None:
        if not args.load_best_model_at_end:
            return None
        name = "loss"
    if not name.startswith("eval_"):
        name = f"eval_{name}"
    greater = args.greater_is_better
    if greater is None:
        greater = not name.endswith("loss")
    return name, "maximize" if greater else "minimize"


class MlvcCallback(TrainerCallback):
    """A ``TrainerCallback`` that records into mlvc.

    Args:
        run: Record into this run instead of starting one (it is not closed here).
        log_checkpoints: Record each saved checkpoint directory.
        **track_options: Passed to :func:`mlvc.track` (``repository``, ``name``,
            ``params``, ``strict``...).
    """

    def __init__(
        self, run: Run | None = None, log_checkpoints: bool = True, **track_options: Any
    ) -> None:
        self._holder = RunHolder(run, track_options)
        self._log_checkpoints = log_checkpoints
        self._metrics: dict[str, float] = {}

    @property
    def experiment_id(self) -> str | None:
        """The id of the experiment recorded (None before training started)."""
        return self._holder.experiment_id

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        """Start the run with the training arguments (and the model's config) as params."""
        if not state.is_world_process_zero:
            return
        params: dict[str, Any] = dict(args.to_dict())  # type: ignore[no-untyped-call]
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            params["model"] = config.to_dict()
        self._holder.add_params(params)
        self._holder.get()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Append the numbers logged to the run's series at the global step."""
        if not state.is_world_process_zero or not logs:
            return
        values = {
            k: v for k, v in logs.items() if isinstance(v, Number) and not isinstance(v, bool)
        }
        if values:
            self._metrics.update(values)  # type: ignore[arg-type]
            self._holder.get().log(values, step=state.global_step)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Record the checkpoint directory just saved, ranked by ``metric_for_best_model``."""
        if not state.is_world_process_zero or not self._log_checkpoints:
            return
        folder = os.path.join(
            args.output_dir or ".", f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        )
        if not os.path.isdir(folder):
            return
        self._holder.get().checkpoint(
            path=folder,
            step=state.global_step,
            metrics=dict(self._metrics),
            primary_metric=_primary(args),
        )

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """End the run (a later ``evaluate`` resumes the experiment)."""
        if state.is_world_process_zero:
            self._holder.end()
