"""Test gaps found by planting bugs (issue 18):

- every field that determines a caption folder's provenance, varied one at a time, makes a
  resume into that folder refused (through ``run.py`` as a user types it);
- the atomic writers (``records.write_text`` / ``write_json`` / ``write_jsonl`` /
  ``atomic_dir``) failing halfway leave the old content and no temp file;
- the float32 fit path (``adapter.fit_dtype=float32``) is really taken: its maps differ from
  the float64 fit's (within float32 tolerance, not bit-identical) and its cache entry is
  another one.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

import pytest
import torch

from fuse_repro import records
from fuse_repro.adapter import fit_adapter, fit_token_map
from fuse_repro.records import OutputError, atomic_dir, write_json, write_jsonl, write_text
from fuse_repro.testing.toy import ToyModel, toy_adapter_config

# --------------------------------------------------------------------------------------------
# atomic writes that fail halfway


def _leftovers(folder: Path, final: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != final)


def _failing_fsync(fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_text_failing_halfway_keeps_the_old_content(tmp_path, monkeypatch):
    """The disk fills after part of the new text was written: the old file survives byte for
    byte, the error is one OutputError line naming the file, and no temp file is left."""
    path = tmp_path / "metrics.json"
    path.write_text("old content\n", encoding="utf-8")
    monkeypatch.setattr(records.os, "fsync", _failing_fsync)
    with pytest.raises(OutputError, match=r"metrics\.json: No space left on device"):
        write_text(path, "new content that never fully lands\n" * 100)
    assert path.read_text(encoding="utf-8") == "old content\n"
    assert _leftovers(tmp_path, "metrics.json") == []


def test_write_text_failing_in_the_encoder_keeps_the_old_content(tmp_path):
    """Text that cannot be encoded as UTF-8 (a lone surrogate) after valid text: the write
    stops halfway; the old file survives and no temp file is left."""
    path = tmp_path / "captions.jsonl"
    path.write_bytes(b'{"id": "1"}\n')
    with pytest.raises(UnicodeEncodeError):
        write_text(path, "a" * 10000 + "\ud800")
    assert path.read_bytes() == b'{"id": "1"}\n'
    assert _leftovers(tmp_path, "captions.jsonl") == []


def test_write_text_without_an_old_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(records.os, "fsync", _failing_fsync)
    with pytest.raises(OutputError):
        write_text(tmp_path / "new.json", "{}\n")
    assert list(tmp_path.iterdir()) == []


def test_write_text_success_replaces_whole_file_with_mode_644(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a much longer old content\n" * 10)
    write_text(path, "é\n")
    assert path.read_bytes() == "é\n".encode()
    assert (path.stat().st_mode & 0o777) == 0o644
    assert _leftovers(tmp_path, "a.txt") == []


def test_write_json_and_jsonl_failing_halfway_keep_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "run_info.json"
    write_json(path, {"status": "finished"})
    before = path.read_bytes()
    with pytest.raises(ValueError):  # NaN refused by allow_nan=False before anything lands
        write_json(path, {"status": "failed", "score": float("nan")}, allow_nan=False)
    assert path.read_bytes() == before

    def rows():
        yield {"id": "1", "caption": "a dog"}
        raise RuntimeError("the producer died after one row")

    lines = tmp_path / "captions.jsonl"
    write_jsonl(lines, [{"id": "0", "caption": "old"}])
    with pytest.raises(RuntimeError):
        write_jsonl(lines, rows())
    assert lines.read_text() == '{"caption": "old", "id": "0"}\n'
    monkeypatch.setattr(records.os, "fsync", _failing_fsync)
    with pytest.raises(OutputError):
        write_json(path, {"status": "failed"})
    assert path.read_bytes() == before
    assert _leftovers(tmp_path, "run_info.json") == ["captions.jsonl"]


def _filled(folder: Path, text: str) -> None:
    (folder / "maps.bin").write_text(text)
    (folder / "meta.json").write_text(json.dumps({"v": text}))


def test_atomic_dir_failing_halfway_keeps_the_old_folder(tmp_path):
    """``write`` fails after one of its files: the complete old folder stays as it was (even
    with replace=True) and no temporary folder is left."""
    final = tmp_path / "entry"
    atomic_dir(final, lambda d: _filled(d, "old"))
    before = {p.name: p.read_bytes() for p in final.iterdir()}

    def half(folder: Path) -> None:
        (folder / "maps.bin").write_text("new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_dir(final, half, replace=True)
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
    assert _leftovers(tmp_path, "entry") == []
    # a permission error halfway is one OutputError line naming the folder
    def denied(folder: Path) -> None:
        (folder / "maps.bin").write_text("new, half")
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(OutputError, match="entry: Permission denied"):
        atomic_dir(final, denied, replace=True)
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
    assert _leftovers(tmp_path, "entry") == []


def test_atomic_dir_keeps_or_replaces_a_complete_folder(tmp_path):
    final = tmp_path / "entry"
    calls = []
    atomic_dir(final, lambda d: (calls.append(1), _filled(d, "old")))
    # without replace an existing folder wins and write is not called
    assert atomic_dir(final, lambda d: (calls.append(2), _filled(d, "new"))) == final
    assert calls == [1] and (final / "maps.bin").read_text() == "old"
    # with replace the new complete copy replaces it, files of the old one included
    (final / "stale.txt").write_text("x")
    atomic_dir(final, lambda d: _filled(d, "new"), replace=True)
    assert sorted(p.name for p in final.iterdir()) == ["maps.bin", "meta.json"]
    assert (final / "maps.bin").read_text() == "new"
    assert _leftovers(tmp_path, "entry") == []


def test_atomic_dir_loses_a_race_to_a_concurrent_writer(tmp_path, monkeypatch):
    """Another process renamed its complete copy into place first: ours is dropped, theirs
    kept, and no temporary folder is left."""
    final = tmp_path / "entry"

    def write(folder: Path) -> None:
        _filled(folder, "ours")
        atomic_dir(final, lambda d: _filled(d, "theirs"))  # the concurrent writer wins

    real_rename = os.rename

    def rename(src, dst):
        if Path(dst) == final and final.exists():
            raise OSError(errno.ENOTEMPTY, "Directory not empty")
        return real_rename(src, dst)

    monkeypatch.setattr(records.os, "rename", rename)
    assert atomic_dir(final, write) == final
    assert (final / "maps.bin").read_text() == "theirs"
    assert _leftovers(tmp_path, "entry") == []


# --------------------------------------------------------------------------------------------
# the float32 fit path


def _float32_pair(toy):
    """The toy pair with float32 tables (real models' precision: fit_dtype then matters)."""
    src = ToyModel("toy-src-f32", toy.source.tokenizer, toy.source.table.float())
    tgt = ToyModel("toy-tgt-f32", toy.target.tokenizer, toy.target.table.float())
    return src, tgt


def test_float32_fit_is_another_fit_close_to_float64(toy, tmp_path):
    """With float32 tables, fit_dtype=float32 accumulates the solve in float32: its maps agree
    with the float64 fit to float32 precision but are not bit-identical, and it is another
    cache entry. A fit that ignored fit_dtype would give identical maps and one entry."""
    src, tgt = _float32_pair(toy)
    cfg64 = toy_adapter_config(tmp_path, toy.words[:600], heldout_words=20)
    cfg32 = dataclasses.replace(cfg64, fit_dtype="float32")
    cache = tmp_path / "cache"
    f64 = fit_adapter(src, tgt, cfg64, cache)
    f32 = fit_adapter(src, tgt, cfg32, cache)
    assert f32.key != f64.key and f32.path != f64.path
    assert sorted(f32.maps) == sorted(f64.maps)
    differs = False
    for l, m64 in f64.maps.items():
        m32 = f32.maps[l]
        assert m32.dtype == m64.dtype == torch.float32  # stored maps are float32 either way
        assert m32.shape == m64.shape
        scale = m64.abs().max().item()
        assert torch.allclose(m32, m64, rtol=0, atol=1e-3 * scale), l
        differs |= not torch.equal(m32, m64)
    assert differs, "fit_dtype=float32 gave bit-identical maps: the setting was ignored"
    # Both recover the planted maps; the float64 fit much more precisely.
    err64 = max((f64.maps[l].double() - toy.maps[l]).abs().max().item() for l in f64.maps)
    err32 = max((f32.maps[l].double() - toy.maps[l]).abs().max().item() for l in f32.maps)
    assert err64 < 1e-5 and err32 < 1e-2 and err32 > err64
    # the cached float32 entry loads back as itself
    again = fit_adapter(src, tgt, cfg32, cache)
    assert again.from_cache and again.key == f32.key
    assert all(torch.equal(again.maps[l], f32.maps[l]) for l in f32.maps)
    assert json.loads((f32.path / "meta.json").read_text())["fields"]["fit_dtype"] == "float32"


def test_float64_tables_keep_float64_accumulation(toy, tmp_path):
    """Data already in float64 is never solved below its precision: fit_dtype=float32 then
    gives the same maps as float64 (but still its own cache key)."""
    cfg64 = toy_adapter_config(tmp_path, toy.words[:300])
    cfg32 = dataclasses.replace(cfg64, fit_dtype="float32")
    f64 = fit_adapter(toy.source, toy.target, cfg64, None)
    f32 = fit_adapter(toy.source, toy.target, cfg32, None)
    assert f32.key != f64.key
    assert all(torch.equal(f32.maps[l], f64.maps[l]) for l in f64.maps)


def test_float32_token_map_differs_from_float64(toy, tmp_path):
    """The token-level map (section 3.2) honours fit_dtype too."""
    src, _ = _float32_pair(toy)
    gen = torch.Generator().manual_seed(3)
    mix = torch.randn(src.dim, 4, generator=gen)
    tgt = ToyModel("toy-tok-f32", src.tokenizer, src.table @ mix)
    cfg64 = toy_adapter_config(tmp_path, toy.words[:50])
    cfg32 = dataclasses.replace(cfg64, fit_dtype="float32")
    m64, rep64 = fit_token_map(src, tgt, cfg64)
    m32, rep32 = fit_token_map(src, tgt, cfg32)
    assert m64.dtype == m32.dtype == torch.float32
    assert torch.allclose(m32, m64, atol=1e-3) and not torch.equal(m32, m64)
    assert torch.allclose(m64, mix, atol=1e-4)
    assert rep64["residual_fit"] < 1e-5
