"""Hugging Face Transformers: a real Trainer on a tiny CPU model, recorded by MlvcCallback."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlvc

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mlvc.integrations.transformers import MlvcCallback  # noqa: E402


class Rows(torch.utils.data.Dataset):  # type: ignore[misc]
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 16, (n, 8), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_trainer_logs_saves_and_ranks_by_metric_for_best_model(project: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        output_dir=str(project / "out"),
        num_train_epochs=3,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_steps=1,
        metric_for_best_model="loss",
        greater_is_better=False,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = MlvcCallback(name="gpt")
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Rows(16), eval_dataset=Rows(8), callbacks=[callback]
    )
    trainer.train()
    exp = mlvc.experiments.get(callback.experiment_id)  # type: ignore[arg-type]
    assert exp.status == "stopped" and exp.name == "gpt"
    assert exp.params["learning_rate"] == 0.05
    assert exp.params["model.n_embd"] == 8
    assert len(exp.metrics("loss")) >= 10
    assert [c.step for c in exp.checkpoints] == [4, 8, 12]
    assert exp.summary["primary_metric"] == {"name": "eval_loss", "goal": "minimize"}
    best = exp.best()
    assert best is not None
    assert best.step == int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1])
    assert best.metrics["eval_loss"] == pytest.approx(trainer.state.best_metric)
    files = dict(best.files())
    assert f"out/checkpoint-{best.step}/model.safetensors" in files
    saved = project / "out" / f"checkpoint-{best.step}" / "model.safetensors"
    with best.open(f"out/checkpoint-{best.step}/model.safetensors") as f:
        assert f.read() == saved.read_bytes()
