"""Repository statistics: logical vs stored bytes, without reading any file content."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mlvc_core.objects import CHUNK
from mlvc_core.packs import PACK_PREFIX
from mlvc_core.repository import Repository
from mlvc_core.walk import all_roots, reachable_commits


@dataclass(frozen=True)
class RepoStats:
    """What a repository holds."""

    logical_bytes: int
    """Sum of the sizes of every reachable commit's files (what a copy per version would take)."""
    stored_bytes: int
    """Bytes of pack files in the store."""
    dedup_ratio: float
    chunks: int
    objects: int
    packs: int
    commits: int
    refs: int

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form."""
        return asdict(self)


def stats(repo: Repository) -> RepoStats:
    """Compute :class:`RepoStats`. Reads refs, commits and root trees only."""
    repo.load_index()
    refs = repo.refs.list()
    commits = reachable_commits(repo, all_roots(repo))
    logical = 0
    for cid in commits:
        logical += repo.read_tree(repo.read_commit(cid).tree).size
    packs = list(repo.store.list(PACK_PREFIX))
    stored = sum(p.size for p in packs)
    chunks = objects = 0
    for _, loc in repo.iter_index():
        if loc.kind == CHUNK:
            chunks += 1
        else:
            objects += 1
    return RepoStats(
        logical_bytes=logical,
        stored_bytes=stored,
        dedup_ratio=(logical / stored) if stored else 0.0,
        chunks=chunks,
        objects=objects,
        packs=len(packs),
        commits=len(commits),
        refs=len(refs),
    )
