"""A real PyTorch training loop recorded with mlvc, then read back bit for bit."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import mlvc

torch = pytest.importorskip("torch")


def _train(run: mlvc.Run, epochs: int = 6) -> tuple[list[float], list[dict[str, object]]]:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)).squeeze(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    # A learning rate high enough to make the loss wander, so the best step is not simply the last.
    opt = torch.optim.SGD(model.parameters(), lr=0.08, momentum=0.9)
    losses, states = [], []
    for epoch in range(epochs):
        for i in range(0, 256, 32):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[i : i + 32]).squeeze(1), y[i : i + 32])
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = torch.nn.functional.mse_loss(model(x).squeeze(1), y).item()
        torch.save(model.state_dict(), "model.pth")
        torch.save(opt.state_dict(), "optim.pth")
        run.checkpoint(
            path=["model.pth", "optim.pth"],
            step=epoch,
            metrics={"loss": torch.tensor(val), "epoch": epoch},
            primary_metric=("loss", "minimize"),
        )
        losses.append(val)
        states.append(copy.deepcopy(model.state_dict()))
    return losses, states


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_loop_round_trip(project: Path, tmp_path: Path) -> None:
    with mlvc.track(params={"lr": 0.08, "epochs": 6}) as run:
        losses, states = _train(run)
    exp = mlvc.experiments.get(run.id)
    assert exp.status == "stopped"
    assert exp.params == {"lr": 0.08, "epochs": 6}
    assert [c.step for c in exp.checkpoints] == list(range(6))
    assert [v for _, v in exp.metrics("loss")] == pytest.approx(losses)

    best_step = min(range(len(losses)), key=lambda i: losses[i])
    assert best_step not in (0, 5)  # a real choice, not the first or the last
    best = exp.best()
    assert best is not None and best.step == best_step
    assert best.metrics["loss"] == pytest.approx(losses[best_step])
    assert exp.latest().step == 5
    assert sorted(p for p, _ in best.files()) == ["model.pth", "optim.pth"]
    assert "train.py" in {p for p, _ in best.files(all=True)}

    # open(): streamed straight from the repository
    with best.open("model.pth") as f:
        _assert_same(torch.load(f), states[best_step])
    # checkout(): the checkpoint's own files only
    out = tmp_path / "out"
    assert sorted(best.checkout(out)) == ["model.pth", "optim.pth"]
    _assert_same(torch.load(out / "model.pth"), states[best_step])
    assert not (out / "train.py").exists()
    # the one-liner
    _assert_same(torch.load(mlvc.load(f"{exp.id[:8]}@best", "model.pth")), states[best_step])
    _assert_same(torch.load(mlvc.load(f"{exp.id[:8]}@step=2", "model.pth")), states[2])
    _assert_same(torch.load(mlvc.load(exp.id[:10], "model.pth")), states[best_step])
    directory = mlvc.load(f"{exp.id[:8]}@latest")
    _assert_same(torch.load(directory / "model.pth"), states[5])
    assert mlvc.load(f"{exp.id[:8]}@latest") == directory  # cached checkout reused
