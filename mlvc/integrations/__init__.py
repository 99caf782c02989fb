"""Record training runs of the common frameworks with mlvc, without writing the loop code.

Each integration is its own module and imports its framework; ``import mlvc`` imports none of
them. Install the framework with its extra:

* :mod:`mlvc.integrations.lightning` - ``MlvcLogger``, a PyTorch Lightning logger
  (``pip install "mlvc[lightning]"``)::

      trainer = Trainer(logger=MlvcLogger(), callbacks=[ModelCheckpoint(monitor="val_loss")])

  Metrics -> ``run.log`` at the global step; hyperparameters -> params; each file a
  ``ModelCheckpoint`` saves -> a checkpoint, the monitored metric as primary.
* :mod:`mlvc.integrations.transformers` - ``MlvcCallback``, a Hugging Face
  ``TrainerCallback`` (``pip install "mlvc[transformers]"``)::

      Trainer(model, args, train_dataset=..., callbacks=[MlvcCallback()])

  ``on_log`` -> ``run.log`` at the global step; ``TrainingArguments`` (and the model's
  config, under ``model.``) -> params; each saved ``checkpoint-N`` directory -> a checkpoint,
  ranked by ``metric_for_best_model`` / ``greater_is_better``.
* :mod:`mlvc.integrations.keras` - ``MlvcCallback``, a Keras 3 callback
  (``pip install "mlvc[keras]"``; any backend, e.g. ``KERAS_BACKEND=torch``)::

      model.fit(x, y, epochs=5, callbacks=[MlvcCallback(save=True, monitor="val_loss")])

  Epoch logs -> ``run.log`` at the epoch; ``save=True`` saves the model each epoch (or only
  when ``monitor`` improves, ``save_best_only=True``) and records it as a checkpoint.

All of them start the run (:func:`mlvc.track`; keyword arguments such as ``repository``,
``name``, ``params`` pass through) when training starts, or use a ``run=`` you started, and
end it when training ends: ``stopped``, or ``failed`` with the exception, or ``interrupted``.
In a distributed job only rank 0 records. Like ``track()``, they never break training: a
storage failure is logged, and what the storage cannot take yet waits in the outbox.
"""
