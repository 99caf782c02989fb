"""The one id grammar: every form, through every entry point, names the same thing.

One small repository: experiment A (primary metric ``loss``; checkpoints at steps 0, 1, 2, the
best at step 1), experiment B (no primary metric; steps 0 and 5), a tag ``prod`` moved from
A's step 0 to its step 2, and two commits on branch ``main``. Each row of :data:`ROWS` is a
form and what it must name; each test runs every row through one entry point.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import mlvc
from mlvc.errors import ObjectNotFound, UsageError
from mlvc.experiments import revisions
from mlvc.repo import forget_shared, open_repo
from mlvc.settings import load_settings
from tests.cli.conftest import Cli


@dataclass(frozen=True)
class Row:
    """A form (``str.format`` template over the ids) and what it names."""

    form: str
    commit: str
    """Key of the commit it stands for (``A1``: A's checkpoint at step 1; ``c1``...)."""
    kind: str
    experiment: str | None
    """The experiment ``experiments.get`` returns (None: refused)."""
    ref: str | None
    """The ref ``push --ref`` moves (None: refused)."""
    removable: bool
    """``rm`` accepts it (an experiment or checkpoint named without a tag or branch)."""


ROWS = [
    Row("{A}", "A1", "experiment", "A", "experiments/{A}", True),
    Row("{A:.8}", "A1", "experiment", "A", "experiments/{A}", True),
    Row("experiments/{A:.8}", "A1", "experiment", "A", "experiments/{A}", True),
    Row("{A:.8}@best", "A1", "checkpoint", "A", None, True),
    Row("{A:.8}@latest", "A2", "checkpoint", "A", None, True),
    Row("{A:.8}@step=0", "A0", "checkpoint", "A", None, True),
    Row("{A:.8}@0", "A0", "checkpoint", "A", None, True),
    Row("{A:.8}@latest~1", "A1", "checkpoint", "A", None, True),
    Row("{A:.8}@latest~", "A1", "checkpoint", "A", None, True),
    Row("{A:.8}@latest~2", "A0", "checkpoint", "A", None, True),
    Row("{A1}", "A1", "checkpoint", "A", None, True),
    Row("{A1:.10}", "A1", "checkpoint", "A", None, True),
    Row("{B:.9}", "B5", "experiment", "B", "experiments/{B}", True),
    Row("{B:.9}@latest", "B5", "checkpoint", "B", None, True),
    Row("{B:.9}@5", "B5", "checkpoint", "B", None, True),
    Row("prod", "A2", "checkpoint", "A", "tags/prod", False),
    Row("tags/prod", "A2", "checkpoint", "A", "tags/prod", False),
    Row("prod@{{0}}", "A2", "checkpoint", "A", None, False),
    Row("prod@{{1}}", "A0", "checkpoint", "A", None, False),
    Row("prod~1", "A1", "checkpoint", "A", None, False),
    Row("main", "c2", "commit", None, "heads/main", False),
    Row("heads/main", "c2", "commit", None, "heads/main", False),
    Row("main~1", "c1", "commit", None, None, False),
    Row("main~", "c1", "commit", None, None, False),
    Row("{c1:.9}", "c1", "commit", None, None, False),
]

BAD = [
    ("{A:.8}@worst", UsageError, 2),  # no such selector
    ("{B:.8}@best", ObjectNotFound, 4),  # B has no primary metric
    ("{A:.8}@step=7", ObjectNotFound, 4),  # no checkpoint at step 7
    ("main@best", UsageError, 2),  # @best applies to experiments only
    ("main@{{1}}", UsageError, 2),  # @{{N}} applies to tags only
    ("prod@{{5}}", ObjectNotFound, 4),  # the tag named only two commits
    ("main~9", ObjectNotFound, 4),  # history too short
    ("feedface00", ObjectNotFound, 4),  # nothing by that id
    ("nosuchname", ObjectNotFound, 4),
    ("{A:.8}@@best", UsageError, 2),
]


@dataclass
class Repo:
    """The project (cwd), its CLI, and the ids by key."""

    project: Path
    cli: Cli
    ids: dict[str, str]

    def fill(self, template: str) -> str:
        return template.format(**self.ids)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    tmp = tmp_path_factory.mktemp("revisions")
    project = tmp / "proj"
    project.mkdir()
    old_cwd, old_argv = Path.cwd(), sys.argv
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLVC_CACHE_DIR", str(tmp / "cache"))
        for k in [k for k in os.environ if k.startswith("MLVC_") and k != "MLVC_CACHE_DIR"]:
            mp.delenv(k)
        os.chdir(project)
        sys.argv = ["train.py"]
        try:
            cli = Cli(project)
            cli("init")
            (project / "train.py").write_text("print('training')\n")
            ids: dict[str, str] = {}
            weights = project / "w.bin"
            with mlvc.track(params={"lr": 0.1}, name="A") as run:
                for step, loss in ((0, 3.0), (1, 1.0), (2, 2.0)):
                    weights.write_bytes(f"A{step}".encode() * 100)
                    run.checkpoint(
                        path=weights,
                        step=step,
                        metrics={"loss": loss},
                        primary_metric=("loss", "minimize"),
                    )
            with mlvc.track(params={"lr": 0.2}, name="B") as run_b:
                for step in (0, 5):
                    weights.write_bytes(f"B{step}".encode() * 100)
                    run_b.checkpoint(path=weights, step=step, metrics={"loss": 1.0})
            for key, r in (("A", run), ("B", run_b)):
                assert r.id is not None
                ids[key] = r.id
                for c in mlvc.experiments.get(r.id).checkpoints:
                    ids[f"{key}{c.step}"] = c.id
            cli("tag", "prod", ids["A0"])
            cli("tag", "prod", ids["A2"])
            (project / "data.txt").write_text("one\n")
            ids["c1"] = cli.json("commit", "data.txt", "-m", "one")["id"]
            (project / "data.txt").write_text("two\n")
            ids["c2"] = cli.json("commit", "data.txt", "-m", "two")["id"]
            yield Repo(project, cli, ids)
        finally:
            os.chdir(old_cwd)
            sys.argv = old_argv
            forget_shared()


@pytest.fixture(autouse=True)
def _in_project(world: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in the project, with the module's cache (conftest scrubs MLVC_*)."""
    monkeypatch.setenv("MLVC_CACHE_DIR", str(world.project.parent / "cache"))
    monkeypatch.chdir(world.project)
    monkeypatch.setattr(sys, "argv", ["train.py"])


@pytest.fixture
def repo(world: Repo) -> Iterator[Any]:
    r = open_repo(load_settings())
    yield r
    r.close()


def test_parse_gives_a_structured_value() -> None:
    rev = revisions.parse(" abc1234@step=-3~2~ ")
    assert (rev.base, rev.selector, rev.step, rev.back) == ("abc1234", "step", -3, 3)
    assert revisions.parse("prod@{4}").version == 4
    assert revisions.parse("deadbeef@7").step == 7
    for bad in ("", "@best", "x@", "x@{y}", "a~b", "x@best@latest"):
        with pytest.raises(UsageError):
            revisions.parse(bad)


def test_short_names_are_parsed_by_the_grammar_only(world: Repo, repo: Any) -> None:
    """Core's ``Repository.resolve`` takes ids and full ref names; short names are the grammar's."""
    ids = world.ids
    assert repo.resolve("heads/main").hex() == ids["c2"]
    assert repo.resolve("tags/prod").hex() == ids["A2"]
    assert repo.resolve(ids["c1"][:9]).hex() == ids["c1"]
    for short in ("main", "prod"):
        with pytest.raises(ObjectNotFound):
            repo.resolve(short)
    assert revisions.resolve(repo, "main").commit_id.hex() == ids["c2"]
    assert revisions.resolve(repo, "prod").commit_id.hex() == ids["A2"]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.form)
def test_python_api(world: Repo, repo: Any, row: Row) -> None:
    form, want = world.fill(row.form), world.ids[row.commit]
    target = revisions.resolve(repo, form)
    assert (target.kind, revisions.hex_of(target.commit_id)) == (row.kind, want)

    # mlvc.load checks out into a cache directory named by the checkpoint's id.
    assert mlvc.load(form).name == want
    if row.kind == "commit":
        with pytest.raises(ObjectNotFound):
            mlvc.checkpoints.get(form)
    else:
        assert mlvc.checkpoints.get(form).id == want
    if row.experiment is None:
        with pytest.raises(ObjectNotFound):
            mlvc.experiments.get(form)
    else:
        assert mlvc.experiments.get(form).id == world.ids[row.experiment]


def test_cli_verbs(world: Repo) -> None:
    cli, out = world.cli, world.project.parent / "out"
    for row in ROWS:
        form, want = world.fill(row.form), world.ids[row.commit]
        shown = cli.json("show", form)
        assert (shown["kind"], shown["commit"]["id"]) == (row.kind, want), form
        diffed = cli.json("diff", form, "prod")
        assert diffed["a"]["commit"] == want, form
        checked = cli.json("checkout", form, "-o", out / form.replace("/", "_"))
        assert checked["target"]["commit"] == want, form
        cli("tag", "scratch", form)
        assert cli.json("show", "scratch")["commit"]["id"] == want, form
        log = cli.json("log", form, "-n", "1")
        if row.kind == "experiment":  # an experiment's log is its chain
            assert log["ref"] == f"experiments/{world.ids[row.experiment or '']}", form
        else:  # a tag's log lists where it pointed, its current target first
            assert log["entries"][0]["id"] == want, form
    cli("tag", "-d", "scratch")


def test_resume_takes_every_form_naming_an_experiment_or_checkpoint(world: Repo) -> None:
    for row in ROWS:
        form = world.fill(row.form)
        if row.experiment is None:
            with pytest.raises(UsageError, match="neither an experiment nor a checkpoint"):
                mlvc.track(resume=form, strict=True)
            continue
        # An experiment continues from its latest checkpoint, a checkpoint from itself.
        latest = {"A": "A2", "B": "B5"}[row.experiment]
        want = world.ids[latest if row.kind == "experiment" else row.commit]
        with mlvc.track(resume=form) as run:
            assert run.resumed_from is not None and run.resumed_from.id == want, form


def test_bad_forms_are_refused_the_same_way_everywhere(world: Repo, repo: Any) -> None:
    cli = world.cli
    for template, error, code in BAD:
        form = world.fill(template)
        with pytest.raises(error):
            revisions.resolve(repo, form)
        with pytest.raises(error):
            mlvc.load(form)
        with pytest.raises(error):
            mlvc.checkpoints.get(form)
        with pytest.raises(error):
            mlvc.experiments.get(form)
        with pytest.raises(error):
            mlvc.track(resume=form, strict=True)
        with pytest.raises(error):
            mlvc.experiments.remove(form)
        for verb in (["show"], ["checkout", "-o", "x"], ["log"], ["rm"], ["tag", "t"]):
            assert cli(*verb, form, code=code).stderr.count("\n") <= 3, (verb, form)


def test_push_moves_the_refs_a_form_names_and_refuses_the_others(world: Repo) -> None:
    cli, dest = world.cli, world.project.parent / "remote"
    for row in ROWS:
        form = world.fill(row.form)
        if row.ref is None:
            r = cli("push", dest, "--ref", form, code=2)
            assert "cannot transfer" in r.stderr, form
            continue
        report = cli.json("push", dest, "--ref", form)
        moved = report["refs_updated"] + report["refs_unchanged"]
        assert moved == [world.fill(row.ref)], form


def test_rm_refuses_tags_branches_and_commits_then_hides_what_it_accepts(
    world: Repo, repo: Any
) -> None:
    cli = world.cli
    for row in ROWS:
        form = world.fill(row.form)
        if not row.removable:
            r = cli("rm", form, code=2)
            assert "cannot remove" in r.stderr, form
            with pytest.raises(UsageError, match="cannot remove"):
                mlvc.experiments.remove(form)
    assert cli.json("show", "prod")["commit"]["id"] == world.ids["A2"]  # the tag is untouched
    # Accepted forms hide what they name: a checkpoint through a selector, then experiment B.
    assert cli.json("rm", world.fill("{A:.8}@step=0")) == [world.ids["A0"]]
    assert [c.step for c in mlvc.experiments.get(world.ids["A"]).checkpoints] == [1, 2]
    assert mlvc.experiments.remove(world.fill("experiments/{B:.8}")) == [world.ids["B"]]
    with pytest.raises(ObjectNotFound):
        mlvc.experiments.get(world.ids["B"])
    assert json.loads(cli("ls", "--json").stdout)[0]["id"] == world.ids["A"]
