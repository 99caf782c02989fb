"""PyTorch Lightning: a real Trainer on a tiny CPU model, recorded through MlvcLogger."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlvc

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from mlvc.integrations.lightning import MlvcLogger  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Linear(hidden, 1))

    def training_step(self, batch: tuple[object, object], _: int) -> object:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[object, object], _: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> object:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _data() -> object:
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = x.sum(dim=1, keepdim=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _trainer(logger: MlvcLogger, root: Path, **ckpt: object) -> object:
    return pl.Trainer(
        max_epochs=4,
        logger=logger,
        callbacks=[pl.callbacks.ModelCheckpoint(**ckpt)],
        default_root_dir=root,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )


def test_fit_records_metrics_params_and_each_saved_checkpoint(project: Path) -> None:
    logger = MlvcLogger(name="tiny")
    trainer = _trainer(logger, project, monitor="val_loss", mode="min", save_top_k=-1)
    trainer.fit(Tiny(), _data(), _data())
    cb = trainer.checkpoint_callback
    exp = mlvc.experiments.get(logger.experiment_id)
    assert exp.name == "tiny" and exp.status == "stopped"
    assert exp.params["lr"] == 0.05 and exp.params["hidden"] == 4
    steps = [s for s, _ in exp.metrics("train_loss")]
    assert len(steps) >= 8 and steps == sorted(steps)
    # one checkpoint per epoch end, at Lightning's global step, ranked by val_loss
    assert [c.step for c in exp.checkpoints] == [4, 8, 12, 16]
    assert exp.summary["primary_metric"] == {"name": "val_loss", "goal": "minimize"}
    best = exp.best()
    assert best is not None
    assert best.metrics["val_loss"] == pytest.approx(float(cb.best_model_score))
    rel = Path(cb.best_model_path).relative_to(project).as_posix()
    assert [p for p, _ in best.files()] == [rel]
    with best.open(rel) as f:
        assert f.read() == Path(cb.best_model_path).read_bytes()


def test_failed_fit_records_the_exception(project: Path) -> None:
    class Broken(Tiny):
        def training_step(self, batch: tuple[object, object], i: int) -> object:
            if self.global_step == 2:
                raise RuntimeError("diverged")
            return super().training_step(batch, i)

    logger = MlvcLogger()
    with pytest.raises(RuntimeError, match="diverged"):
        _trainer(logger, project).fit(Broken(), _data())
    exp = mlvc.experiments.get(logger.experiment_id)  # type: ignore[arg-type]
    assert exp.status == "failed"
    assert exp.summary["error"]["type"] == "RuntimeError"
