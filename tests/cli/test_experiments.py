"""ls, ps, show, diff, checkout, log, tag and rm on experiments recorded with ``mlvc.track``."""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import mlvc
from tests.cli.conftest import Cli

HEX12 = re.compile(r"^[0-9a-f]{12}$")


def weights(lr: float, step: int) -> bytes:
    """Deterministic 'weights' for a run and step (different for every pair)."""
    seed = hashlib.sha256(f"{lr}/{step}".encode()).digest()
    return seed * 4096  # 128 KiB


def record(project: Path, lr: float, losses: list[float], name: str) -> str:
    code = project / "code"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(f"# training script, lr={lr}\n")
    with mlvc.track(
        path=code,
        params={"lr": lr, "layers": 2},
        repository=str(project / ".mlvc"),
        name=name,
        strict=True,
        primary_metric=("loss", "minimize"),
    ) as run:
        for step, loss in enumerate(losses):
            (code / "model.bin").write_bytes(weights(lr, step))
            run.checkpoint(
                path=code / "model.bin", step=step, metrics={"loss": loss, "acc": 1 - loss}
            )
    assert run.id is not None
    return run.id


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Two finished runs, recorded once per module: ``a`` (lr 0.01, best at step 1) and ``b``
    (lr 0.1, best at step 2). Tests work on copies (see ``runs``)."""
    base = tmp_path_factory.mktemp("recorded")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLVC_CACHE_DIR", str(base / "cache"))
        Cli(base)("init")
        ids = {
            "a": record(base, 0.01, [0.5, 0.1, 0.3], "run-a"),
            "b": record(base, 0.1, [0.9, 0.6, 0.4], "run-b"),
        }
        from mlvc.repo import forget_shared

        forget_shared()
    return base, ids


@pytest.fixture
def runs(recorded: tuple[Path, dict[str, str]], project: Path) -> dict[str, str]:
    """A copy of the recorded project (repository, config, code) for one test."""
    base, ids = recorded
    for name in (".mlvc", "code", "mlvc.toml"):
        src = base / name
        if src.is_dir():
            shutil.copytree(src, project / name)
        else:
            shutil.copy2(src, project / name)
    return ids


@pytest.fixture
def cli(project: Path, runs: dict[str, str]) -> Cli:
    """``mlvc`` in the copied project."""
    return Cli(project)


def test_ls_json_table_filter_sort_and_ids(cli: Cli, runs: dict[str, str]) -> None:
    items = cli.json("ls")
    by_id = {e["id"]: e for e in items}
    assert set(by_id) == set(runs.values())
    a = by_id[runs["a"]]
    assert a["params"] == {"lr": 0.01, "layers": 2}
    assert a["status"] == "stopped" and a["checkpoints"] == 3
    assert a["best"]["step"] == 1 and a["best"]["value"] == pytest.approx(0.1)
    assert a["latest_step"] == 2

    table = cli("ls").stdout
    header = table.splitlines()[0].split()
    assert header == [
        "id", "created", "status", "user", "host", "params", "step", "latest", "best"
    ]  # fmt: skip
    assert runs["a"][:12] in table and "loss=0.1 @1" in table and "lr=0.01" in table

    assert [e["id"] for e in cli.json("ls", "--filter", "lr = 0.01")] == [runs["a"]]
    assert [e["id"] for e in cli.json("ls", "--filter", "loss < 0.35")] == [runs["a"]]
    assert cli.json("ls", "-f", "lr = 0.1", "-f", "loss < 0.35") == []
    assert [e["id"] for e in cli.json("ls", "--sort", "best")] == [runs["a"], runs["b"]]
    assert [e["id"] for e in cli.json("ls", "--sort", "-best")] == [runs["b"], runs["a"]]
    ids = cli("ls", "-q").stdout.split()
    assert sorted(ids) == sorted(r[:12] for r in runs.values()) and all(HEX12.match(i) for i in ids)
    bad = cli("ls", "--filter", "lr ~ 3", code=2)
    assert "bad filter" in bad.stderr


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("status = ", "no value after '='"),
        ("loss >", "no value after '>'"),
        ("loss <=\t", "no value after '<='"),
        ("= 3", "no field before '='"),
        ("loss", "no operator"),
    ],
)
def test_ls_refuses_an_incomplete_filter(cli: Cli, condition: str, reason: str) -> None:
    r = cli("ls", "--filter", condition, code=2)
    lines = r.stderr.strip().splitlines()
    assert "bad filter" in lines[0] and reason in lines[0], r.stderr
    assert "no experiments" not in r.output


@pytest.mark.parametrize("condition", ["loss < abc", "lr >= high", "best > x"])
def test_ls_refuses_a_word_ordered_against_a_number(cli: Cli, condition: str) -> None:
    r = cli("ls", "--filter", condition, code=2)
    line = r.stderr.strip().splitlines()[0]
    assert "bad filter" in line and "is a number" in line and "quote it" in line, r.stderr
    assert r.stdout == ""


def test_ls_orders_a_quoted_word_as_text(cli: Cli, runs: dict[str, str]) -> None:
    # Quoted, the word is meant as text: the numbers are compared as their text.
    assert cli.json("ls", "--filter", "loss < 'abc'") != []


def test_ls_filter_on_an_empty_text_value_is_written_quoted(cli: Cli, runs: dict[str, str]) -> None:
    assert cli.json("ls", "--filter", "status = ''") == []


def test_ps_lists_only_running_experiments(cli: Cli, runs: dict[str, str], project: Path) -> None:
    assert cli.json("ps") == []
    assert "no experiments" in cli("ps").stderr
    run = mlvc.init(
        path=project / "code", params={"lr": 1}, repository=str(project / ".mlvc"), strict=True
    )
    try:
        deadline = time.monotonic() + 10
        while not (running := cli.json("ps")) and time.monotonic() < deadline:
            time.sleep(0.1)  # the first heartbeat is written just after the start commit
        assert [e["id"] for e in running] == [run.id]
        assert running[0]["status"] == "running"
        assert run.short_id in cli("ps").stdout
    finally:
        run.close()
    assert cli.json("ps") == []


def test_show_experiment_and_checkpoints(cli: Cli, runs: dict[str, str]) -> None:
    a = runs["a"]
    doc = cli.json("show", a[:8])
    assert doc["kind"] == "experiment" and doc["id"] == a
    assert doc["params"] == {"lr": 0.01, "layers": 2}
    assert doc["metrics"]["loss"] == pytest.approx(0.1)  # the best checkpoint's
    assert doc["commit"]["step"] == 1
    assert "python" in doc["env"] and doc["env"]["packages"]
    assert [c["step"] for c in doc["checkpoints"]] == [0, 1, 2]
    files = {f["path"]: f["size"] for f in doc["files"]}
    assert files["model.bin"] == len(weights(0.01, 1)) and "train.py" in files
    assert doc["experiment"]["status"] == "stopped"

    text = cli("show", a).stdout
    for needle in (
        "kind         experiment",
        "params",
        "lr",
        "metrics",
        "environment",
        "checkpoints",
        "model.bin",
    ):
        assert needle in text, needle

    latest = cli.json("show", f"{a[:8]}@latest")
    assert latest["kind"] == "checkpoint" and latest["commit"]["step"] == 2
    assert latest["params"]["lr"] == 0.01  # params come from the experiment
    assert cli.json("show", f"{a[:8]}@step=0")["commit"]["step"] == 0
    assert cli.json("show", f"{a[:8]}@0")["commit"]["step"] == 0
    ckpt = latest["commit"]["id"]
    by_id = cli.json("show", ckpt[:10])
    assert by_id["kind"] == "checkpoint" and by_id["target"]["experiment"] == a
    missing = cli("show", f"{a[:8]}@step=7", code=4)
    assert "steps of this experiment: 0, 1, 2" in missing.stderr


def test_unknown_names_are_quoted_as_typed_with_the_reason_beside(
    cli: Cli, runs: dict[str, str]
) -> None:
    a = runs["a"][:8]
    cases = {
        f"{a}@step=7": f"error: unknown checkpoint id: '{a}@step=7' (steps of this experiment: ",
        f"{a}~99": f"error: unknown ancestor id: '{a}~99' (only 2 commit(s) before {a})",
    }
    for name, line in cases.items():
        err = cli("show", name, code=4).stderr
        assert err.startswith(line), err
        assert len(err.strip().splitlines()) == 1, err
    err = cli("checkout", a, "--path", "nope.bin", "-o", "out", code=2).stderr
    assert "nope.bin" in err
    bad = cli("show", f"{a[:8]}@soon", code=2)
    assert "bad selector" in bad.stderr


def test_diff_experiments(cli: Cli, runs: dict[str, str]) -> None:
    d = cli.json("diff", runs["a"], runs["b"])
    params = {c["key"]: (c["a"], c["b"]) for c in d["params"]}
    assert params == {"lr": (0.01, 0.1)}
    metrics = {c["key"]: (c["a"], c["b"]) for c in d["metrics"]}
    assert metrics["loss"] == (pytest.approx(0.1), pytest.approx(0.4))
    files = {c["path"]: c["status"] for c in d["files"]}
    assert files == {"model.bin": "modified", "train.py": "modified"}
    text = cli("diff", runs["a"], runs["b"]).stdout
    assert "lr" in text and "model.bin" in text and "128.0 KiB -> 128.0 KiB" in text
    same_run = cli.json("diff", f"{runs['a'][:8]}@step=0", f"{runs['a'][:8]}@step=1")
    assert same_run["params"] == [] and [c["path"] for c in same_run["files"]] == ["model.bin"]


def test_checkout_best_latest_and_everything(cli: Cli, runs: dict[str, str], project: Path) -> None:
    a = runs["a"]
    out = project / "best"
    r = cli("checkout", a, "-o", out)
    assert "wrote 1 files" in r.stderr
    assert (out / "model.bin").read_bytes() == weights(0.01, 1)  # best = lowest loss
    assert not (out / "train.py").exists()  # only the checkpoint's own files
    latest = project / "latest"
    cli("checkout", f"{a[:8]}@latest", "-o", latest)
    assert (latest / "model.bin").read_bytes() == weights(0.01, 2)
    full = cli.json("checkout", f"{a[:8]}@best", "-o", project / "full", "--all")
    assert sorted(full["files"]) == ["model.bin", "train.py"]
    again = cli("checkout", a, "-o", out)  # already there, byte for byte: nothing to do
    assert "wrote 0 files" in again.stderr and "1 already there, unchanged" in again.stderr
    (out / "model.bin").write_bytes(b"edited")
    cli("checkout", a, "-o", out, code=1)


def test_log_tag_and_rollback_on_experiments(cli: Cli, runs: dict[str, str]) -> None:
    a, b = runs["a"], runs["b"]
    log = cli.json("log", a[:9])
    assert log["kind"] == "experiment"
    assert [e["step"] for e in log["entries"]] == [2, 1, 0, None]
    assert log["entries"][-1]["type"] == "experiment"
    assert "start" in cli("log", a).stdout

    cli("tag", "production", f"{a[:8]}@best")
    cli("tag", "production", f"{b[:8]}@best")
    cli("tag", "production", f"{a[:8]}@best")  # rollback
    hist = cli.json("log", "production")["entries"]
    assert [e["experiment"] for e in hist] == [a, b, a]
    assert [e["step"] for e in hist] == [1, 2, 1]
    shown = cli.json("show", "production")
    assert shown["kind"] == "checkpoint" and shown["params"]["lr"] == 0.01


def test_rm_hides_then_gc_frees(cli: Cli, runs: dict[str, str]) -> None:
    a, b = runs["a"], runs["b"]
    latest_b = cli.json("show", f"{b[:8]}@latest")["commit"]["id"]
    removed = cli.json("rm", latest_b[:10])
    assert removed == [latest_b]
    entry = next(e for e in cli.json("ls") if e["id"] == b)
    assert entry["checkpoints"] == 2 and entry["latest_step"] == 1

    assert "gc --yes" in cli("rm", a[:8]).stderr
    assert "already removed" in cli("rm", a[:8], code=2).stderr
    assert [e["id"] for e in cli.json("ls")] == [b]
    everything = {e["id"]: e["status"] for e in cli.json("ls", "--all")}
    assert everything[a] == "removed"
    unknown = cli("rm", "feedface00", code=4)
    assert "feedface00" in unknown.stderr

    freed = cli.json("gc", "--yes")  # right after rm, default grace: no writer is active
    assert freed["bytes_freed"] > 0 and freed["packs_in_grace"] == 0
    assert cli.json("fsck")["ok"] is True
    assert [e["id"] for e in cli.json("ls")] == [b]


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_python_api_and_cli_checkout_restore_the_same_files(
    cli: Cli, runs: dict[str, str], project: Path
) -> None:
    from mlvc.experiments.checkout import CHECKOUT_MARKER

    best = mlvc.experiments.get(runs["a"], repository=str(project / ".mlvc")).best()
    assert best is not None and best.step == 1
    cases: list[tuple[str, list[str], dict[str, Any]]] = [
        ("own", [], {}),
        ("all", ["--all"], {"all": True}),
        ("path", ["-p", "train.py"], {"paths": ["train.py"]}),
    ]
    for tag, args, kwargs in cases:
        api, cmd = project / f"api-{tag}", project / f"cli-{tag}"
        written = best.checkout(api, **kwargs)
        cli("checkout", f"{runs['a']}@best", "-o", cmd, *args)
        on_disk = _tree(cmd)
        assert on_disk.pop(CHECKOUT_MARKER) is not None  # only the CLI marks what it creates
        assert _tree(api) == on_disk
        assert sorted(written) == sorted(on_disk)
    assert sorted(_tree(project / "api-own")) == ["model.bin"]
    assert _tree(project / "api-own")["model.bin"] == weights(0.01, 1)
    assert sorted(_tree(project / "api-all")) == ["model.bin", "train.py"]
    assert best.checkout(project / "api-none", paths=[]) == []  # nothing asked, nothing written
    assert best.checkout(project / "api-own") == []  # already there byte for byte


def _move_before_delete(
    monkeypatch: pytest.MonkeyPatch, project: Path, name: str, *mover: str
) -> list[str]:
    """Make a second ``mlvc`` process run ``mover`` right before ref ``name`` is deleted
    (after the deleting command read it). Returns the names it moved, once each."""
    import os
    import subprocess
    import sys

    from mlvc_core.refs import RefStore

    root = Path(__file__).resolve().parents[2]
    real = RefStore.delete
    moved: list[str] = []

    def delete(self: RefStore, ref: str, *args: Any, **kwargs: Any) -> None:
        if ref == name and not moved:
            moved.append(ref)
            subprocess.run(
                [sys.executable, "-m", "mlvc", *mover],
                cwd=project,
                env={**os.environ, "PYTHONPATH": str(root)},
                check=True,
                capture_output=True,
            )
        real(self, ref, *args, **kwargs)

    monkeypatch.setattr(RefStore, "delete", delete)
    return moved


def test_tag_delete_keeps_a_tag_moved_meanwhile(
    cli: Cli, runs: dict[str, str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = runs["a"], runs["b"]
    cli("tag", "production", f"{a[:8]}@best")
    moved = _move_before_delete(
        monkeypatch, project, "tags/production", "tag", "production", f"{b[:8]}@best"
    )
    err = cli("tag", "-d", "production", code=12).stderr
    assert moved and "production" in err and "changed concurrently" in err
    first, *rest = err.strip().splitlines()  # one error line, then at most a hint
    assert "changed concurrently" in first and all(r.startswith("hint:") for r in rest)
    shown = cli.json("show", "production")  # the newer target stays
    assert shown["params"]["lr"] == 0.1
    cli("tag", "-d", "production")  # unchanged since read: removed
    cli("show", "production", code=4)


def test_rm_keeps_an_experiment_changed_meanwhile(
    cli: Cli, runs: dict[str, str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = runs["a"]
    latest = cli.json("show", f"{a[:8]}@latest")["commit"]["id"]
    # Its summary changes (a checkpoint hidden by another process), its target does not.
    moved = _move_before_delete(monkeypatch, project, f"experiments/{a}", "rm", latest[:12])
    err = cli("rm", a[:8], code=12).stderr
    first, *rest = err.strip().splitlines()  # one error line, then at most a hint
    assert moved and "changed concurrently" in first and all(r.startswith("hint:") for r in rest)
    entry = next(e for e in cli.json("ls") if e["id"] == a)  # still there, as changed
    assert entry["checkpoints"] == 2
    cli("rm", a[:8])
    assert a not in {e["id"] for e in cli.json("ls")}
