"""mlvc: version control for machine learning - the Python API for training scripts and notebooks.

::

    import mlvc

    with mlvc.track(params={"lr": 0.01}) as run:
        ...
        run.checkpoint(path="model.pth", step=epoch, metrics={"loss": loss},
                       primary_metric=("loss", "minimize"))

    exp = mlvc.experiments.get("3f2a9c1")
    state = torch.load(mlvc.load(f"{exp.id[:8]}@best", "model.pth"))

Importing this package is cheap: the submodules (and the storage libraries behind them) load on
first use of a name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "Experiment",
    "Run",
    "checkpoints",
    "errors",
    "experiments",
    "init",
    "load",
    "track",
]

_LAZY = {
    "track": ("mlvc.tracking.run", "track"),
    "init": ("mlvc.tracking.run", "init"),
    "Run": ("mlvc.tracking.run", "Run"),
    "load": ("mlvc.experiments.checkpoints", "load"),
    "Checkpoint": ("mlvc.experiments.checkpoints", "Checkpoint"),
    "Experiment": ("mlvc.experiments.model", "Experiment"),
    "experiments": ("mlvc.experiments", None),
    "checkpoints": ("mlvc.experiments.checkpoints", None),
    "errors": ("mlvc.errors", None),
}

if TYPE_CHECKING:
    from mlvc import errors, experiments
    from mlvc.experiments import checkpoints
    from mlvc.experiments.checkpoints import Checkpoint, load
    from mlvc.experiments.model import Experiment
    from mlvc.tracking.run import Run, init, track


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mlvc' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
