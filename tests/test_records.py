"""Output files (fuse_repro/records.py, provenance.py): atomic writes, JSONL, the two results
formats, run_info, provenance of a caption folder and the shard merge's refusal to mix settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fuse_repro.errors import FuseError
from tests.helpers import root_config
from fuse_repro.provenance import check_provenance, fields_hash, record_provenance, results_fields
from fuse_repro.records import (
    OutputError,
    ProvenanceError,
    atomic_dir,
    captions_by_id,
    check_writable,
    id_sort_key,
    merge_captions,
    natural_key,
    read_captions,
    read_jsonl,
    read_run_info,
    write_json,
    write_jsonl,
    write_run_info,
    write_text,
)


def test_write_text_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = write_text(tmp_path / "a" / "out.txt", "one\n")
    assert path.read_text() == "one\n"
    write_text(path, "two\n")
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_write_json_bytes_are_canonical(tmp_path):
    path = write_json(tmp_path / "x.json", {"b": 1, "a": [1.5, None], "p": Path("/q")})
    assert path.read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1,\n  "p": "/q"\n}\n'
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"x": float("nan")}, allow_nan=False)
    rows = [{"id": "2", "caption": "é"}, {"id": "1", "caption": "a"}]
    text = write_jsonl(tmp_path / "r.jsonl", rows).read_text(encoding="utf-8")
    assert text == '{"caption": "é", "id": "2"}\n{"caption": "a", "id": "1"}\n'


def test_unwritable_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=r"cannot write .*file/sub/x.json: .*choose a writable folder"):
        write_json(blocker / "sub" / "x.json", {})
    with pytest.raises(FuseError, match="choose a writable folder"):
        check_writable(blocker / "run")
    check_writable(tmp_path / "ok")


def test_atomic_dir_keeps_or_replaces(tmp_path):
    calls = []

    def write(folder: Path) -> None:
        calls.append(folder)
        (folder / "f.txt").write_text(str(len(calls)))

    final = atomic_dir(tmp_path / "entry", write)
    assert (final / "f.txt").read_text() == "1"
    atomic_dir(tmp_path / "entry", write)  # an existing complete entry wins
    assert len(calls) == 1
    atomic_dir(tmp_path / "entry", write, replace=True)
    assert (final / "f.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no temp folder left

    def crash(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_dir(tmp_path / "other", crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_read_jsonl_drops_only_a_torn_tail(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2}\n{"id": 3, "cap')
    assert read_jsonl(path) == [{"id": 1}, {"id": 2}]
    path.write_text('{"id": 1}\n{"id": \n{"id": 3}\n')
    with pytest.raises(FuseError, match=r"c.jsonl:2: not JSON"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_read_captions_detects_both_formats(tmp_path):
    ours = tmp_path / "captions.jsonl"
    ours.write_text('{"id": "7", "caption": "a dog", "method": "fuse"}\n')
    coco = tmp_path / "zerocap_results.json"
    coco.write_text(json.dumps([{"image_id": 7, "caption": "a dog on grass", "score": 0.3},
                                {"image_id": 12, "caption": "a cat"}]))
    a, b = read_captions(ours), read_captions(coco)
    assert (a.format, b.format) == ("captions_jsonl", "coco_results")
    assert captions_by_id(b.rows) == {"7": "a dog on grass", "12": "a cat"}
    assert b.rows[0]["score"] == 0.3 and "image_id" not in b.rows[0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": 1, "caption": "x"}]))
    with pytest.raises(FuseError, match=r"bad.json\[0\]: a COCO results entry needs 'image_id'"):
        read_captions(bad)
    with pytest.raises(FuseError, match="not found"):
        read_captions(tmp_path / "nope.json")


def test_run_info_updates_keep_earlier_keys(tmp_path):
    write_run_info(tmp_path, {"experiment": "e", "status": "running"})
    write_run_info(tmp_path, {"status": "finished"})
    assert read_run_info(tmp_path) == {"experiment": "e", "status": "finished"}


def test_sort_keys():
    assert sorted(["10", "9", "b", "a"], key=id_sort_key) == ["9", "10", "a", "b"]
    assert sorted(["job10", "job9"], key=natural_key) == ["job9", "job10"]


# --------------------------------------------------------------------------------------------
# provenance


def _cfg(*overrides: str):
    return root_config(["dataset=coco_karpathy", *overrides])


def test_results_fields_ignore_what_cannot_change_a_caption():
    base = results_fields(_cfg())
    assert base["search.steps"] == 6
    # no such file here: its masked path stands in
    assert base["dataset.annotations"].startswith("<paths.data_dir>/coco/")
    assert not any(k.startswith(("scoring", "logger", "paths", "dataset.subset")) for k in base)
    moved = _cfg("paths.data_dir=/elsewhere", "device=cuda", "dataset.subset.mode=first",
                 "dataset.subset.n=5")
    assert fields_hash(results_fields(moved)) == fields_hash(base)
    assert results_fields(_cfg(), method="lm_only")["search.method"] == "lm_only"
    assert fields_hash(results_fields(_cfg("search.steps=3"))) != fields_hash(base)


def test_check_provenance_only_checks(tmp_path):
    fields = results_fields(_cfg())
    decision = check_provenance(tmp_path, fields, "check")
    assert decision.record == {"hash": fields_hash(fields), "fields": fields}
    assert list(tmp_path.iterdir()) == []  # nothing written: record_provenance writes


def test_resume_with_other_settings_is_refused_unless_forced(tmp_path):
    six, three = results_fields(_cfg()), results_fields(_cfg("search.steps=3"))
    assert record_provenance(tmp_path, six, "check") is None
    (tmp_path / "captions.jsonl").write_text('{"id": "1", "caption": "a"}\n')
    assert record_provenance(tmp_path, six, "check") is None  # same settings: a plain resume
    with pytest.raises(ProvenanceError, match=r"search.steps: 6 -> 3.*resume=force"):
        check_provenance(tmp_path, three, "check")
    before = (tmp_path / "captions.jsonl").read_text()
    with pytest.raises(ProvenanceError):
        record_provenance(tmp_path, three, "check")
    assert (tmp_path / "captions.jsonl").read_text() == before  # a refusal changes nothing
    stamp = record_provenance(tmp_path, three, resume="force")
    assert stamp == fields_hash(three)
    line = json.loads((tmp_path / "captions.jsonl").read_text())
    assert line["config_hash"] == fields_hash(six)  # the old line keeps the hash it was made with
    recorded = json.loads((tmp_path / "captions_config.json").read_text())
    assert recorded["mixed"] and recorded["previous"] == [fields_hash(six)]
    assert recorded["fields"] == three  # both configs' values, not only the old hash
    assert recorded["previous_fields"] == {fields_hash(six): six}
    assert record_provenance(tmp_path, three, resume="force") == stamp  # stays mixed


def test_merge_refuses_shards_made_with_other_settings(tmp_path):
    for name, cfg in (("a", _cfg()), ("b", _cfg()), ("c", _cfg("search.steps=3"))):
        folder = tmp_path / name
        folder.mkdir()
        record_provenance(folder, results_fields(cfg), cfg.resume)
        (folder / "captions.jsonl").write_text(json.dumps({"id": name, "caption": name}) + "\n")
    merged = merge_captions([tmp_path / "a", tmp_path / "b"], tmp_path / "m" / "captions.jsonl")
    assert [r["id"] for r in merged] == ["a", "b"]
    assert (tmp_path / "m" / "captions_config.json").exists()  # the merge keeps the provenance
    with pytest.raises(ProvenanceError, match="different settings"):
        merge_captions([tmp_path / "a", tmp_path / "c"], tmp_path / "n" / "captions.jsonl")
    assert not (tmp_path / "n").exists()


def test_device_rule_checks_spelling_availability_and_index(monkeypatch):
    """One device rule (runtime.resolve_device), also applied from the config before any work."""
    import torch

    from fuse_repro.errors import ConfigError
    from fuse_repro.runtime import check_device, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="is not a torch device"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            check_device("cuda:7")
    # A machine with one CUDA device (mocked: the rule only asks torch how many there are).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"device='cuda:7' but this machine has 1 CUDA device"):
        check_device("cuda:7")


def test_provenance_names_the_annotation_file_by_content_not_path(tmp_path):
    """The same annotation bytes at another path (a moved checkout) give the same hash; other
    bytes at the same path do not."""
    demo = root_config().dataset.annotations  # the bundled demo set, under this checkout
    copy = tmp_path / "moved checkout" / "demo.json"
    copy.parent.mkdir()
    copy.write_bytes(Path(demo).read_bytes())
    here = results_fields(root_config())
    moved = results_fields(root_config([f"dataset.annotations={copy}"]))
    assert here["dataset.annotations"].startswith("sha256:")
    assert fields_hash(moved) == fields_hash(here)
    copy.write_bytes(Path(demo).read_bytes().replace(b"a", b"b", 1))
    edited = results_fields(root_config([f"dataset.annotations={copy}"]))
    assert fields_hash(edited) != fields_hash(here)
