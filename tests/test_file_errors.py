"""Files that are not what they claim to be (issue 18): binary, another encoding, truncated, a
folder in place of a file. Wherever the project reads a file a user points at -- dataset
annotations, corpus text files, captions/results files, the records a run folder keeps,
adapter and tokenized-corpus caches, images -- the outcome is one line naming the file and the
fix (or, for caches, a logged refit), never a decoder traceback. Through ``run.py`` in
``tests/test_errors.py`` (config-level cases) and below (a corrupt image among good ones);
here through the public readers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from fuse_repro.config.schemas import CorpusConfig
from fuse_repro.corpus import CorpusError, check_corpus, load_corpus_words, tokenize_words
from fuse_repro.data.items import DatasetError
from fuse_repro.data.readers import read_coco_captions, read_karpathy, read_text_targets
from fuse_repro.errors import FuseError
from fuse_repro.records import (
    ProvenanceError,
    RecordsError,
    read_captions,
    read_jsonl,
    read_provenance,
    read_run_info,
)
from tests.helpers import TEXT_ASSERTIONS

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"


def _binary(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(PNG_HEAD + bytes(range(256)))
    return path


def _latin1(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes('[{"id": "1", "target": "un caf\xe9 au lait"}]'.encode("latin-1"))
    return path


def _utf16(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text('[{"id": "1", "target": "a dog"}]', encoding="utf-16")
    return path


def _folder(folder: Path, name: str) -> Path:
    path = folder / name
    path.mkdir()
    (path / "inside.json").write_text("[]")
    return path


def _truncated(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text('[{"id": "1", "target": "a dog", "references": ["a dog on a be')
    return path


BAD = {"binary": _binary, "latin1": _latin1, "utf16": _utf16, "folder": _folder,
       "truncated": _truncated}
WHY = {"binary": "not UTF-8 text", "latin1": "not UTF-8 text", "utf16": "not UTF-8 text",
       "folder": "is a folder", "truncated": "truncated?"}


def _corpus(path: Path) -> None:
    cfg = CorpusConfig(kind="text_file", path=str(path))
    check_corpus(cfg)  # config time, before any model loads
    load_corpus_words(cfg)


def _captions_dir_record(kind: str) -> Callable[[Path], object]:
    def read(path: Path) -> object:  # both are read from the run folder holding them
        return read_provenance(path.parent) if kind == "provenance" else read_run_info(path.parent)
    return read


# reader -> (error class, the fix it names, whether a non-JSON text file is an error for it)
READERS: dict[str, tuple[Callable[[Path], object], type[FuseError], str, str]] = {
    "text_targets": (read_text_targets, DatasetError, "dataset.annotations", "annotations.json"),
    "karpathy": (read_karpathy, DatasetError, "dataset.annotations", "dataset_coco.json"),
    "coco_captions": (read_coco_captions, DatasetError, "dataset.annotations", "captions.json"),
    "corpus": (_corpus, CorpusError, "adapter.corpus.path", "corpus.txt"),
    "captions": (read_captions, RecordsError, "scoring.captions", "results.json"),
    "jsonl": (read_jsonl, RecordsError, "JSON object per line", "errors.jsonl"),
    "provenance": (_captions_dir_record("provenance"), ProvenanceError, "new run folder",
                   "captions_config.json"),
    "run_info": (_captions_dir_record("run_info"), RecordsError, "run folder", "run_info.json"),
}
# A truncated JSON is text: the corpus reads it as words, and read_jsonl keeps the lines before
# a torn last one (an interrupted append), so neither is an error for them.
NOT_AN_ERROR = {("corpus", "truncated"), ("jsonl", "truncated")}


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_file_that_is_not_what_it_claims_is_one_line(reader, bad, tmp_path):
    read, error, fix, name = READERS[reader]
    if (reader, bad) in NOT_AN_ERROR:
        pytest.skip("a truncated JSON file is valid input here (see NOT_AN_ERROR)")
    path = BAD[bad](tmp_path, name)
    with pytest.raises(error) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, UnicodeError)
    assert info.value.__suppress_context__ or info.value.__context__ is None
    if TEXT_ASSERTIONS:
        assert str(path) in message, message  # names the file
        assert WHY[bad] in message, message  # says what is wrong with it
        assert fix in message, message  # and how to fix it


def test_a_truncated_jsonl_keeps_the_lines_before_the_torn_one(tmp_path, caplog):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"id": "1", "caption": "a dog"}\n{"id": "2", "capt')
    with caplog.at_level(logging.WARNING, logger="fuse_repro.records"):
        assert read_jsonl(path) == [{"id": "1", "caption": "a dog"}]
    assert "torn last line" in caplog.text
    path.write_text('{"id": "1", "capt\n{"id": "2", "caption": "a dog"}\n')
    with pytest.raises(RecordsError, match=r"captions\.jsonl:1: not JSON"):
        read_jsonl(path)


def test_a_missing_file_is_not_found_and_a_missing_record_is_none(tmp_path):
    with pytest.raises(RecordsError, match="not found"):
        read_captions(tmp_path / "nope.jsonl")
    with pytest.raises(CorpusError, match="not found"):
        _corpus(tmp_path / "nope.txt")
    with pytest.raises(DatasetError, match="not found"):
        read_text_targets(tmp_path / "nope.json")
    assert read_jsonl(tmp_path / "nope.jsonl") == []
    assert read_provenance(tmp_path) is None


def test_an_unreadable_file_is_one_line(tmp_path):
    import os

    path = tmp_path / "results.json"
    path.write_text("[]")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who reads any file (root)")
        with pytest.raises(RecordsError, match="cannot read captions file .*Permission denied"):
            read_captions(path)
    finally:
        path.chmod(0o644)


def test_a_good_utf8_corpus_with_a_bom_and_accents_is_read(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("café naïve\nplain words\n", encoding="utf-8")
    assert load_corpus_words(CorpusConfig(kind="text_file", path=str(path))) == [
        "café", "naïve", "plain", "words"]


def test_corpus_check_reads_only_the_head_and_the_fit_catches_the_rest(tmp_path):
    """The config-time check decodes the head of the file (1 MiB); a bad byte past it is still
    one line when the fit reads the whole file."""
    from fuse_repro.corpus import _check_text_file

    path = tmp_path / "corpus.txt"
    path.write_bytes(b"word " * 100 + b"\xff tail")
    _check_text_file(path, probe=64)  # the bad byte lies past the probed head
    with pytest.raises(CorpusError, match=r"not UTF-8 text \(byte 0xff at offset 500"):
        load_corpus_words(CorpusConfig(kind="text_file", path=str(path)))
    with pytest.raises(CorpusError, match="not UTF-8 text"):
        _check_text_file(path)
    # a character cut at the end of the probed head is not an error
    path.write_bytes(b"a" * 63 + "é".encode() + b" b")
    _check_text_file(path, probe=64)


# --------------------------------------------------------------------------------------------
# caches: a damaged entry is refitted / retokenized with one logged line, never a crash


@pytest.mark.parametrize("damage", ["meta_binary", "meta_folder", "maps_truncated", "maps_folder",
                                    "report_latin1", "report_missing"])
def test_a_damaged_adapter_cache_entry_is_refitted(damage, toy, tmp_path, caplog):
    import torch

    from fuse_repro.adapter import fit_adapter
    from fuse_repro.testing.toy import toy_adapter_config

    cfg = toy_adapter_config(tmp_path, toy.words[:200])
    cache = tmp_path / "cache"
    first = fit_adapter(toy.source, toy.target, cfg, cache)
    entry = first.path
    target = {"meta": entry / "meta.json", "maps": entry / "maps.safetensors",
              "report": entry / "report.json"}[damage.split("_")[0]]
    how = damage.split("_")[1]
    if how == "binary":
        target.write_bytes(PNG_HEAD)
    elif how == "folder":
        target.unlink()
        target.mkdir()
    elif how == "truncated":
        target.write_bytes(target.read_bytes()[:40])
    elif how == "latin1":
        target.write_bytes('{"key": "caf\xe9"}'.encode("latin-1"))
    else:
        target.unlink()
    with caplog.at_level(logging.WARNING, logger="fuse_repro.adapter"):
        again = fit_adapter(toy.source, toy.target, cfg, cache)
    assert not again.from_cache and again.key == first.key
    assert all(torch.equal(again.maps[l], first.maps[l]) for l in first.maps)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and "cache" in r.getMessage()]
    assert len(warnings) == 1 and str(entry) in warnings[0] and "refitting" in warnings[0]
    # the entry was rewritten whole: the next call is a cache hit
    assert fit_adapter(toy.source, toy.target, cfg, cache).from_cache


@pytest.mark.parametrize("damage", ["binary", "folder", "truncated"])
def test_a_damaged_tokenized_corpus_cache_is_retokenized(damage, toy, tmp_path, caplog):
    words = toy.words[:100]
    first = tokenize_words(words, toy.source.tokenizer, tmp_path)
    (entry,) = (tmp_path / "tokenized").iterdir()
    ids = entry / "ids.npz"
    if damage == "binary":
        ids.write_bytes(PNG_HEAD)
    elif damage == "folder":
        ids.unlink()
        ids.mkdir()
    else:
        ids.write_bytes(ids.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="fuse_repro.corpus"):
        again = tokenize_words(words, toy.source.tokenizer, tmp_path)
    assert again.lists() == first.lists()
    assert f"tokenized corpus cache {entry} is unreadable" in caplog.text
    assert (entry / "ids.npz").is_file()  # rewritten


# --------------------------------------------------------------------------------------------
# images: a corrupt one among good ones fails that item alone


def test_item_open_image_names_a_corrupt_file(tmp_path):
    from PIL import Image

    from fuse_repro.data.items import Item

    import numpy as np

    good = tmp_path / "good.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(good)
    assert Item(id="g", image_path=str(good)).open_image().size == (64, 64)
    half = good.read_bytes()[: good.stat().st_size // 2]
    for name, data in (("text.jpg", b"not an image"), ("cut.png", half)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OSError) as info:
            Item(id="b", image_path=str(tmp_path / name)).open_image()
        assert isinstance(info.value, FuseError)  # one line at the entry, an OSError per item
        if TEXT_ASSERTIONS:
            assert str(tmp_path / name) in str(info.value) and "replace or remove" in str(info.value)
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(OSError, match="adir.png"):
        Item(id="d", image_path=str(tmp_path / "adir.png")).open_image()


@pytest.mark.slow
def test_a_corrupt_image_among_good_ones_fails_that_item_only(tmp_path, model_cache_dir):
    """``python run.py stage=caption dataset=image_folder ...`` over two good images and a
    truncated one: the run finishes (exit 0), captions the two good ones, and records the bad one
    in errors.jsonl with one line naming the file."""
    from PIL import Image

    from tests.helpers import fresh_cache_sharing_models, isolated_env, run_py

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(images / "a_red.png")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(images / "c_blue.png")
    (images / "b_cut.jpg").write_bytes((images / "a_red.png").read_bytes()[:60])
    run_dir = tmp_path / "run"
    cache = fresh_cache_sharing_models(tmp_path, model_cache_dir)
    run_py(["stage=caption", "dataset=image_folder", f"dataset.image_dir={images}",
            "model@source=tiny_gpt2", "model@objective.terms.clip.model=tiny_clip",
            "adapter.words_per_bucket=64", "adapter.corpus.max_words=5000", "search.steps=1",
            "search.min_steps=1", "search.top_k=4", "search.beam_width=1", "logger=none",
            f"hydra.run.dir={run_dir}"], isolated_env(tmp_path, cache), timeout=400)
    captions = [json.loads(line) for line in (run_dir / "captions.jsonl").read_text().splitlines()]
    assert [c["id"] for c in captions] == ["a_red", "c_blue"]
    errors = [json.loads(line) for line in (run_dir / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["b_cut"]
    assert "\n" not in errors[0]["error"] and str(images / "b_cut.jpg") in errors[0]["error"]
    assert "Traceback" not in (run_dir / "run.log").read_text()
