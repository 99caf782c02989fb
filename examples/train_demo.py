"""A small training run recorded with mlvc: a two-layer network fitted to noisy data with numpy.

Run it from a project directory; mlvc records the code, the parameters, the environment and a
checkpoint (weights + optimizer state) every epoch, with the validation loss deciding "best".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import mlvc


def main() -> None:
    """Train a tiny model and record every epoch as a checkpoint."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--out", default="outputs")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 64)).astype(np.float32)
    true_w = rng.standard_normal((64, 1)).astype(np.float32)
    y = np.tanh(x @ true_w) + 0.1 * rng.standard_normal((2048, 1)).astype(np.float32)
    x_train, y_train, x_val, y_val = x[:1536], y[:1536], x[1536:], y[1536:]

    w1 = (rng.standard_normal((64, args.hidden)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((args.hidden, 1)) * 0.1).astype(np.float32)
    out = Path(args.out)
    out.mkdir(exist_ok=True)

    params = {"epochs": args.epochs, "lr": args.lr, "hidden": args.hidden}
    with mlvc.track(params=params, name="numpy-mlp") as run:
        for epoch in range(args.epochs):
            for i in range(0, len(x_train), 64):
                xb, yb = x_train[i : i + 64], y_train[i : i + 64]
                h = np.maximum(xb @ w1, 0)
                err = h @ w2 - yb
                grad_w2 = h.T @ err / len(xb)
                grad_w1 = xb.T @ ((err @ w2.T) * (h > 0)) / len(xb)
                w1 -= args.lr * grad_w1
                w2 -= args.lr * grad_w2
            val_loss = float(np.mean((np.maximum(x_val @ w1, 0) @ w2 - y_val) ** 2))
            np.savez(out / "weights.npz", w1=w1, w2=w2)
            (out / "metrics.json").write_text(json.dumps({"epoch": epoch, "val_loss": val_loss}))
            run.checkpoint(
                path=str(out),
                step=epoch,
                metrics={"val_loss": val_loss},
                primary_metric=("val_loss", "minimize"),
            )
            print(f"epoch {epoch}: val_loss={val_loss:.4f}")


if __name__ == "__main__":
    main()
