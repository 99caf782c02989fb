"""Many experiments written fast with the plumbing API (tests and ``benchmarks/bench_scale.py``).

Each experiment is what ``mlvc.track`` writes: a first commit (code snapshot, params, env), one
to three checkpoint commits whose trees hold the code plus a small checkpoint file of their own,
and the ref ``experiments/<id>`` with its summary. Many experiments share one write session,
so they land in a few packs instead of a few each.
"""

from __future__ import annotations

import random
from typing import Any

from mlvc.experiments import ref_name, summary_with_checkpoint
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.ingest import ingest_bytes
from mlvc_core.objects import Commit, Tree, TreeEntry
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession


def _file(s: WriteSession, data: bytes) -> TreeEntry:
    manifest = s.add_object(ingest_bytes(s, data))
    return TreeEntry("", "file", manifest, len(data))


def _tree(entries: dict[str, TreeEntry]) -> Tree:
    return Tree(
        tuple(TreeEntry(n, e.kind, e.oid, e.size, e.mode, e.target) for n, e in entries.items())
    )


def make_experiments(
    repo: Repository,
    n: int,
    seed: int = 0,
    start: int = 0,
    checkpoint_bytes: int = 2048,
    per_session: int = 500,
) -> list[str]:
    """Write ``n`` experiments (1-3 checkpoints each); return their ids.

    Args:
        repo: Where to write.
        n: How many.
        seed: Makes the content (and so the ids) reproducible.
        start: Number of the first experiment (names ``exp<start>``...).
        checkpoint_bytes: Size of each checkpoint's own file (random, incompressible).
        per_session: Experiments per write session (one pack and index each).
    """
    rng = random.Random(seed * 1_000_003 + start)
    ids: list[str] = []
    done = 0
    while done < n:
        batch = min(per_session, n - done)
        with WriteSession(repo) as s:
            code = _file(s, b"import torch\nprint('training')\n")
            pending: list[tuple[str, ObjectId, dict[str, Any]]] = []
            for i in range(start + done, start + done + batch):
                t0 = 1_700_000_000.0 + i
                params = {"lr": 10.0 ** -(i % 4), "batch": 32 * (1 + i % 3), "i": i}
                env = {"user": "bench", "host": f"node{i % 7}", "command_line": "train.py"}
                code_tree = s.add_object(_tree({"train.py": code}))
                first = s.add_object(
                    Commit(
                        tree=code_tree,
                        author="bench@node",
                        time=t0,
                        message=f"experiment exp{i}",
                        metadata={
                            "type": "experiment",
                            "name": f"exp{i}",
                            "params": params,
                            "env": env,
                            "started": t0,
                            "code_path": "/work",
                        },
                    )
                )
                exp_id = to_hex(first)
                summary: dict[str, Any] = {
                    "type": "experiment",
                    "name": f"exp{i}",
                    "created": t0,
                    "user": env["user"],
                    "host": env["host"],
                    "command": env["command_line"],
                    "params": params,
                    "status": "stopped",
                    "ended": t0 + 100,
                    "checkpoints": 0,
                    "latest": None,
                    "latest_step": None,
                    "latest_metrics": {},
                    "primary_metric": {"name": "loss", "goal": "minimize"},
                    "best": None,
                    "removed": [],
                }
                parent = first
                for step in range(1 + rng.randrange(3)):
                    ckpt = _file(s, rng.randbytes(checkpoint_bytes))
                    tree = s.add_object(_tree({"train.py": code, "model.bin": ckpt}))
                    metrics = {
                        "loss": round(rng.random() + 1.0 / (step + 1), 6),
                        "acc": rng.random(),
                    }
                    parent = s.add_object(
                        Commit(
                            tree=tree,
                            parents=(parent,),
                            author="bench@node",
                            time=t0 + step + 1,
                            message=f"checkpoint step {step}",
                            metadata={
                                "type": "checkpoint",
                                "experiment": exp_id,
                                "step": step,
                                "metrics": metrics,
                                "primary_metric": {"name": "loss", "goal": "minimize"},
                                "paths": ["model.bin"],
                            },
                        )
                    )
                    summary = summary_with_checkpoint(
                        summary, to_hex(parent), step, metrics, ("loss", "minimize")
                    )
                pending.append((exp_id, parent, summary))
            s.flush()  # objects first, refs last (write ordering)
            for exp_id, tip, summary in pending:
                repo.refs.set(ref_name(exp_id), tip, None, summary)
                ids.append(exp_id)
        done += batch
    return ids
