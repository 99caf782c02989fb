"""``mlvc diff A B --tensors`` on real safetensors and torch checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.cli.conftest import Cli, Write

st_numpy = pytest.importorskip("safetensors.numpy")


def _bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _save(
    write: Write, rel: str, tensors: dict[str, np.ndarray], bf16: tuple[str, ...] = ()
) -> None:
    """A safetensors file; the uint16 arrays named in ``bf16`` are stored as BF16 bits."""
    data = bytes(st_numpy.save(tensors))
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    for name in bf16:
        header[name]["dtype"] = "BF16"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    write(rel, len(text).to_bytes(8, "little") + text + data[8 + n :])


def _by_name(doc: dict, path: str) -> dict[str, dict]:
    (f,) = [f for f in doc["files"] if f["path"] == path]
    return {t["name"]: t for t in f["tensors"]}


def test_tensor_diff_reports_which_tensors_moved_and_by_how_much(cli: Cli, write: Write) -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((256, 512)) * 0.02).astype(np.float32)
    frozen = rng.standard_normal((300, 512)).astype(np.float32)
    h = rng.standard_normal(4096).astype(np.float32)
    first = {"w": w, "frozen": frozen, "h": _bf16(h), "gone": np.zeros(3, np.float32)}
    _save(write, "ckpt/model.safetensors", first, bf16=("h",))
    a = cli("commit", "ckpt", "-m", "a").stdout.strip()

    w2 = w.copy()
    w2[0, 0] += 0.5
    w2[3] -= 0.001
    h2 = h.copy()
    h2[:10] *= 2
    second = {"w": w2, "frozen": frozen, "h": _bf16(h2), "new": np.ones(2, np.float32)}
    _save(write, "ckpt/model.safetensors", second, bf16=("h",))
    b = cli("commit", "ckpt", "-m", "b").stdout.strip()

    doc = cli.json("diff", a, b, "--tensors")
    t = _by_name(doc, "ckpt/model.safetensors")
    assert t["frozen"]["status"] == "unchanged" and t["frozen"]["max_abs"] is None
    assert t["new"]["status"] == "added" and t["gone"]["status"] == "removed"
    wt = t["w"]
    assert wt["status"] == "changed" and wt["dtype"] == "F32" and wt["shape"] == [256, 512]
    d = w2.astype(np.float64) - w.astype(np.float64)
    assert wt["changed_values"] == int(np.count_nonzero(w2 != w))
    assert math.isclose(wt["max_abs"], np.abs(d).max(), rel_tol=1e-12)
    assert math.isclose(wt["mean_abs"], np.abs(d).mean(), rel_tol=1e-9)
    rel = np.linalg.norm(d) / np.linalg.norm(w.astype(np.float64))
    assert math.isclose(wt["rel_norm"], rel, rel_tol=1e-9)
    ht = t["h"]
    assert ht["dtype"] == "BF16" and ht["status"] == "changed"
    ha = (_bf16(h).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    hb = (_bf16(h2).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    assert math.isclose(ht["max_abs"], np.abs(hb - ha).max(), rel_tol=1e-12)
    assert ht["changed_values"] == int(np.count_nonzero(ha != hb))

    text = cli("diff", a, b, "--tensors").stdout
    assert "ckpt/model.safetensors (safetensors): 4 of 5 tensors changed" in text
    assert "frozen" in text and "BF16 4096" in text


def test_tensor_diff_of_torch_checkpoints(cli: Cli, write: Write) -> None:
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(1)
    state = {"enc.weight": torch.randn(64, 64, generator=g), "step": torch.tensor(7)}
    path = cli.cwd / "run" / "last.pt"
    path.parent.mkdir()
    torch.save({"model": state, "epoch": 1}, path)
    a = cli("commit", "run", "-m", "a").stdout.strip()
    moved = {"enc.weight": state["enc.weight"] * 1.01, "step": torch.tensor(8)}
    torch.save({"model": moved, "epoch": 2}, path)
    b = cli("commit", "run", "-m", "b").stdout.strip()
    t = _by_name(cli.json("diff", a, b, "--tensors"), "run/last.pt")
    assert set(t) == {"model.enc.weight", "model.step"}
    assert t["model.step"]["dtype"] == "I64" and t["model.step"]["max_abs"] == 1.0
    assert math.isclose(t["model.enc.weight"]["rel_norm"], 0.01, rel_tol=1e-4)


def test_tensor_diff_names_changed_files_it_could_not_compare_and_refuses_code_with_tensors(
    cli: Cli, write: Write
) -> None:
    write("d/notes.txt", "a")
    write("d/same.txt", "same")
    write("d/weights.bin", b"not a tensor file at all" * 100)
    a = cli("commit", "d", "-m", "a").stdout.strip()
    write("d/notes.txt", "b")
    write("d/weights.bin", b"still not one" * 100)
    b = cli("commit", "d", "-m", "b").stdout.strip()
    doc = cli.json("diff", a, b, "--tensors")
    assert doc["files"] == []
    assert doc["not_tensor_files"] == ["d/notes.txt", "d/weights.bin"]
    err = cli("diff", a, b, "--tensors").stderr
    assert "no tensor files" in err
    assert "2 changed files are not tensor files" in err and "d/weights.bin" in err
    assert "same.txt" not in err
    bad = cli("diff", a, b, "--tensors", "--code", code=2)
    assert "cannot be combined" in bad.stderr


def test_a_large_tensor_is_compared_block_by_block(
    cli: Cli, write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlvc.commands import tensordiff

    monkeypatch.setattr(tensordiff, "BLOCK_BYTES", 4096)  # many blocks; some equal, some not
    rng = np.random.default_rng(5)
    x = rng.standard_normal(100_000).astype(np.float32)
    _save(write, "m.safetensors", {"x": x})
    a = cli("commit", "m.safetensors", "-m", "a").stdout.strip()
    y = x.copy()
    y[50_000:50_010] += 1.0
    y[99_999] = np.nan
    _save(write, "m.safetensors", {"x": y})
    b = cli("commit", "m.safetensors", "-m", "b").stdout.strip()
    t = _by_name(cli.json("diff", a, b, "--tensors"), "m.safetensors")["x"]
    assert t["changed_values"] == 11
    assert t["max_abs"] == t["mean_abs"] == t["rel_norm"] == "nan"  # a NaN is not hidden
