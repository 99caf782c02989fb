"""``mlvc plot``: metrics of one or more experiments against the step, in one image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlvc.cli import _output
from mlvc.cli._options import state
from mlvc_core.errors import UsageError


def plot(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(help="Experiment ids (prefixes of 7+ hex digits).")],
    metric: Annotated[
        list[str],
        typer.Option("--metric", "-m", help="A metric to plot (repeat for several)."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Image file to write (.png, .svg, .pdf).")
    ] = Path("metrics.png"),
) -> None:
    """Plot metrics (logged with run.log, or recorded at checkpoints) of experiments.

    Each experiment and metric is one line; matplotlib is needed (pip install matplotlib).

    Examples:
        mlvc plot 1a2b3c4d 5e6f7a8b -m loss -o loss.png

        mlvc plot 1a2b3c4d -m loss -m val_loss
    """
    from mlvc import experiments

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("mlvc plot needs matplotlib: pip install matplotlib") from None
    st = state(ctx)
    repo = st.repo()
    exps = [experiments.get(i, repo) for i in ids]  # every id resolved before drawing
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for exp in exps:
        for name in metric:
            points = exp.metrics(name)
            if not points:
                _output.note(f"{exp.short_id} has no metric {name!r}", st.quiet)
                continue
            xs = [s if s is not None else i for i, (s, _) in enumerate(points)]
            ax.plot(xs, [v for _, v in points], label=f"{exp.name or exp.short_id} {name}")
            drawn += 1
    if not drawn:
        plt.close(fig)
        raise UsageError(f"none of the experiments has metric {', '.join(map(repr, metric))}")
    ax.set_xlabel("step")
    ax.set_ylabel(", ".join(metric))
    ax.legend()
    fig.savefig(output, bbox_inches="tight")
    plt.close(fig)
    _output.note(f"wrote {output} ({drawn} line{'' if drawn == 1 else 's'})", st.quiet)


def register(app: typer.Typer) -> None:
    """Add ``plot`` to ``app``."""
    app.command()(plot)
