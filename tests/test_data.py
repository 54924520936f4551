"""Dataset readers, subsets, synthetic images and config loading (fuse_repro/data/,
conf/dataset/*.yaml)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from fuse_repro.config import ConfigError, SyntheticImagesConfig
from fuse_repro.data import (
    DatasetError,
    Item,
    check_images,
    id_sort_key,
    load_dataset,
    read_coco_captions,
    read_embedded_refs,
    read_image_folder,
    read_karpathy,
    read_nocaps,
    read_nocaps_corpus,
    read_senticap,
    read_synthetic_images,
    read_text_targets,
    select_subset,
)
from fuse_repro.data.synthetic import PALETTE, render, scene
from tests.helpers import REPO, SHARED, needs_shared


def _dataset_cfg(name: str, data_dir: Path, **overrides: object):
    """The composed ``dataset`` group of ``dataset=<name>`` with paths.data_dir=<data_dir>,
    seed 0 and ``dataset.<key>=<value>`` overrides, as ``python run.py`` composes it."""
    args = [f"dataset={name}", f"paths.data_dir={data_dir}", "seed=0"]
    args += [f"dataset.{k}={'null' if v is None else v}" for k, v in overrides.items()]
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf"),
                               job_name="test_data"):
        return compose("config", overrides=args).dataset


# ---------------------------------------------------------------------------- formats


@needs_shared
def test_karpathy_format_sample_splits_and_paths():
    path = SHARED / "scorer_check" / "dataset_coco_testing.json"
    test = read_karpathy(path, image_dir="/imgs/val2014", split="test")
    assert [it.id for it in test] == ["391895"]
    assert test[0].image_path == "/imgs/val2014/COCO_val2014_000000391895.jpg"
    assert len(test[0].references) == 5
    assert test[0].references[2] == "A man riding on the back of a motorcycle."
    assert [it.id for it in read_karpathy(path, split="val")] == ["184613"]
    assert read_karpathy(path, split="val")[0].image_path is None
    with pytest.raises(DatasetError, match=r"no images in split 'nope'.*restval"):
        read_karpathy(path, split="nope")


@needs_shared
def test_coco_captions_karpathy_test_matches_gts_by_id():
    items = read_coco_captions(SHARED / "coco_karpathy" / "captions_karpathy_test5k_cocofmt.json")
    gts = json.loads((SHARED / "coco_karpathy" / "karpathy_test5k_gts_by_imageid.json").read_text())
    assert len(items) == 5000
    assert sum(len(it.references) for it in items) == 25010
    assert {it.id: it.references for it in items} == gts
    assert all(it.image_path is None and it.sentiment is None for it in items)


@needs_shared
def test_nocaps_corpus_domains():
    items = read_nocaps_corpus(SHARED / "nocaps_val" / "nocaps_corpus.json", image_dir="/nc")
    assert len(items) == 4500
    assert Counter(it.domain for it in items) == {
        "near-domain": 2670, "out-domain": 1413, "in-domain": 417}
    assert all(len(it.references) == 10 for it in items)
    assert items[0].id == "0" and items[0].image_path == "/nc/0.jpg"


def test_nocaps_official_format(tmp_path):
    data = {
        "images": [
            {"id": 0, "file_name": "0013ea2087020901.jpg", "domain": "in-domain"},
            {"id": 7, "file_name": "00223fe4b1f6a0ec.jpg", "domain": "out-domain"},
        ],
        "annotations": [
            {"image_id": 7, "id": 1, "caption": "A bird on a branch."},
            {"image_id": 0, "id": 2, "caption": "A child in front of a house."},
            {"image_id": 7, "id": 3, "caption": "A small bird."},
        ],
    }
    path = tmp_path / "nocaps_val_4500_captions.json"
    path.write_text(json.dumps(data))
    items = read_nocaps(path, image_dir=tmp_path / "val")
    assert [(it.id, it.domain, it.references) for it in items] == [
        ("0", "in-domain", ["A child in front of a house."]),
        ("7", "out-domain", ["A bird on a branch.", "A small bird."]),
    ]
    assert items[1].image_path == str(tmp_path / "val" / "00223fe4b1f6a0ec.jpg")
    data["images"][0]["domain"] = "middle-domain"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="unknown NoCaps domain 'middle-domain'"):
        read_nocaps(path)


@needs_shared
@pytest.mark.parametrize("sentiment,short,n_images,n_refs",
                         [("positive", "pos", 673, 2019), ("negative", "neg", 503, 1509)])
def test_senticap_original_equals_published_cocofmt(sentiment, short, n_images, n_refs):
    items = read_senticap(SHARED / "senticap" / "senticap_dataset.json", sentiment,
                          image_dir="/coco/val2014")
    assert len(items) == n_images
    assert sum(len(it.references) for it in items) == n_refs
    assert all(it.sentiment == sentiment for it in items)
    ref = read_coco_captions(SHARED / "senticap" / f"senticap_test_{short}_cocofmt.json",
                             sentiment=sentiment)
    assert [(it.id, it.references, it.sentiment) for it in items] == [
        (it.id, it.references, it.sentiment) for it in ref]
    assert items[0].image_path.startswith("/coco/val2014/COCO_val2014_")


@needs_shared
def test_embedded_refs_magic_and_nocaps_outputs():
    magic = read_embedded_refs(SHARED / "magic" / "mscoco_magic_result.json")
    assert len(magic) == 4982 and magic[0].id == "391895" and len(magic[0].references) == 5
    assert all(it.domain is None for it in magic)
    raj = read_embedded_refs(
        SHARED / "nocaps_val" / "rajgothi_coco_train_1_overall_generated_captions.json")
    assert Counter(it.domain for it in raj)["out-domain"] == 1413


def test_image_folder_sorted_images_only(tmp_path):
    for name in ["b.png", "a.JPG", "notes.txt", "c.jpeg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    items = read_image_folder(tmp_path)
    assert [it.id for it in items] == ["a", "b", "c"]
    assert all(it.references == [] and it.image_path for it in items)
    with pytest.raises(DatasetError, match="not found"):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="duplicate id 'a'"):
        read_image_folder(tmp_path)


def test_text_targets(tmp_path):
    path = tmp_path / "targets.json"
    path.write_text(json.dumps([
        {"id": 1, "target": "a red bus", "references": ["a red bus on a road"]},
        {"id": "b", "target": "a cat"},
    ]))
    items = read_text_targets(path)
    assert items == [Item(id="1", target="a red bus", references=["a red bus on a road"]),
                     Item(id="b", target="a cat", references=[])]


# ---------------------------------------------------------------------------- errors


def test_missing_file_error_names_file_expectation_and_source(tmp_path):
    missing = tmp_path / "dataset_coco.json"
    with pytest.raises(DatasetError) as err:
        read_karpathy(missing)
    text = str(err.value)
    assert str(missing) in text
    assert "expected" in text and "sentences" in text
    assert "cs.stanford.edu/people/karpathy" in text


@pytest.mark.parametrize("reader,content,pattern", [
    (read_karpathy, "{not json", r"not valid JSON"),
    (read_karpathy, '[{"filename": "x.jpg"}]', r"no 'images' list"),
    (read_karpathy, '{"images": [{"split": "test"}]}', r"image entry 0 lacks 'filename'"),
    (read_coco_captions, '{"images": []}', r"no 'images'/'annotations' lists"),
    (read_coco_captions, ('{"images": [{"id": 1}], "annotations": [{"image_id": 2, '
                          '"caption": "x"}]}'), r"missing from 'images'"),
    (read_nocaps, '{"images": [{"id": 1}], "annotations": []}', r"lacks 'id' or 'domain'"),
    (read_nocaps_corpus, '{"split": "in_domain"}', r"top level is not a list"),
    (read_text_targets, '[{"id": 1}]', r"entry 0 lacks 'id' or a string 'target'"),
    (read_text_targets, '[{"id": 1, "target": "t"}, {"id": 1, "target": "u"}]',
     r"duplicate id '1'"),
])
def test_malformed_files_give_clear_errors(tmp_path, reader, content, pattern):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=pattern) as err:
        reader(path)
    assert str(path) in str(err.value)
    assert "Official copy" in str(err.value)


def test_senticap_errors(tmp_path):
    path = tmp_path / "senticap_dataset.json"
    path.write_text(json.dumps({"images": [{"filename": "COCO_val2014_000000000042.jpg",
                                            "split": "test", "sentences": [{"raw": "x"}]}]}))
    with pytest.raises(DatasetError, match="without 'raw' or 'sentiment'"):
        read_senticap(path, "positive")
    with pytest.raises(DatasetError, match="sentiment must be one of"):
        read_senticap(path, "happy")


def test_require_images_names_missing_files(tmp_path):
    items = [Item(id="1", image_path=str(tmp_path / "1.jpg")), Item(id="2")]
    with pytest.raises(DatasetError, match=r"2 of 2 items have no readable image file.*1\.jpg"):
        check_images(items)
    (tmp_path / "1.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="1 of 2"):
        check_images(items)


# ---------------------------------------------------------------------------- subsets


def _items(n: int) -> list[Item]:
    return [Item(id=str(i), references=[f"caption {i}"]) for i in range(n)]


def test_subset_first():
    items = _items(10)
    assert [it.id for it in select_subset(items, "first", n=3)] == ["0", "1", "2"]
    assert len(select_subset(items, "first", n=50)) == 10
    with pytest.raises(ConfigError, match="needs subset.n >= 1, got n=0"):
        select_subset(items, "first", n=0)


def test_subset_sample_is_seeded_stable_and_in_dataset_order():
    items = _items(100)
    a = [it.id for it in select_subset(items, "sample", n=10, seed=0)]
    b = [it.id for it in select_subset(items, "sample", n=10, seed=0)]
    c = [it.id for it in select_subset(items, "sample", n=10, seed=1)]
    assert a == b and a != c
    assert len(set(a)) == 10
    assert a == sorted(a, key=id_sort_key)
    # The exact draw of numpy's default_rng(0): pins the sampler so a change is noticed.
    import numpy as np

    expected = sorted(np.random.default_rng(0).choice(100, size=10, replace=False).tolist())
    assert a == [str(i) for i in expected]
    with pytest.raises(ConfigError, match="needs subset.seed"):
        select_subset(items, "sample", n=10, seed=None)


@pytest.mark.parametrize("n,count", [(10, 3), (7, 7), (5, 8), (4500, 4)])
def test_subset_shards_partition_the_set(n, count):
    items = _items(n)
    shards = [select_subset(items, "shard", index=i, count=count) for i in range(count)]
    assert [it for shard in shards for it in shard] == items
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_subset_bad_values():
    items = _items(4)
    with pytest.raises(ConfigError, match="0 <= subset.index < count=2, got index=2"):
        select_subset(items, "shard", index=2, count=2)
    with pytest.raises(ConfigError, match="subset.count >= 1"):
        select_subset(items, "shard", index=0, count=0)
    with pytest.raises(ConfigError, match=r"dataset.subset.mode='every_other' is not one of"):
        select_subset(items, "every_other")


# ---------------------------------------------------------------------------- configs


@needs_shared
def test_load_dataset_from_conf_files(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "dataset_coco.json").symlink_to(
        SHARED / "scorer_check" / "dataset_coco_testing.json")
    (tmp_path / "senticap").mkdir()
    (tmp_path / "senticap" / "senticap_dataset.json").symlink_to(
        SHARED / "senticap" / "senticap_dataset.json")
    (tmp_path / "nocaps").mkdir()
    (tmp_path / "nocaps" / "nocaps_corpus.json").symlink_to(
        SHARED / "nocaps_val" / "nocaps_corpus.json")

    coco = load_dataset(_dataset_cfg("coco_karpathy", tmp_path))
    assert [it.id for it in coco] == ["391895"]
    assert coco[0].image_path == str(tmp_path / "coco" / "val2014" /
                                     "COCO_val2014_000000391895.jpg")
    pos = load_dataset(_dataset_cfg("senticap_positive", tmp_path))
    neg = load_dataset(_dataset_cfg("senticap_negative", tmp_path))
    assert (len(pos), len(neg)) == (673, 503)
    nocaps = load_dataset(_dataset_cfg(
        "nocaps_val", tmp_path, format="nocaps_corpus",
        annotations=str(tmp_path / "nocaps" / "nocaps_corpus.json"),
        **{"subset.mode": "shard", "subset.index": 1, "subset.count": 3}))
    assert len(nocaps) == 1500 and nocaps[0].id == "1500"
    sample = load_dataset(_dataset_cfg("senticap_positive", tmp_path,
                                       **{"subset.mode": "sample", "subset.n": 5}))
    assert [it.id for it in sample] == [it.id for it in select_subset(pos, "sample", n=5, seed=0)]


def test_load_dataset_missing_file_and_bad_config(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(_dataset_cfg("nocaps_val", tmp_path))
    assert str(tmp_path / "nocaps" / "nocaps_val_4500_captions.json") in str(err.value)
    assert "nocaps.s3.amazonaws.com" in str(err.value)
    # The config is checked (one line, naming key and group) before any file is read.
    with pytest.raises(ConfigError, match=r"dataset.format='tsv' is not one of"):
        load_dataset({"name": "x", "format": "tsv"})
    with pytest.raises(ConfigError, match=r"unknown key subset.size in config group dataset "
                                          r"\(schema SubsetConfig\)"):
        load_dataset({"name": "x", "format": "text_targets", "annotations": "x.json",
                      "subset": {"mode": "first", "size": 3}})
    with pytest.raises(ConfigError, match="unknown key image_folder in config group dataset"):
        load_dataset({"name": "x", "format": "text_targets", "annotations": "x.json",
                      "image_folder": "/tmp"})
    with pytest.raises(ConfigError, match="format 'text_targets' needs dataset.annotations"):
        load_dataset({"name": "x", "format": "text_targets"})
    with pytest.raises(ConfigError, match="needs dataset.image_dir"):
        load_dataset(_dataset_cfg("image_folder", tmp_path, image_dir=None))
    images = tmp_path / "images"
    images.mkdir()
    (images / "x.png").write_bytes(b"x")
    assert [it.id for it in load_dataset(_dataset_cfg("image_folder", tmp_path))] == ["x"]


def test_text_targets_conf(tmp_path):
    (tmp_path / "text_targets.json").write_text(json.dumps(
        [{"id": i, "target": f"t{i}"} for i in range(6)]))
    items = load_dataset(_dataset_cfg("text_targets", tmp_path,
                                      **{"subset.mode": "first", "subset.n": 2}))
    assert [it.target for it in items] == ["t0", "t1"]


# ---------------------------------------------------------------------------- synthetic images


def test_synthetic_images_are_seeded_and_need_no_files():
    cfg = SyntheticImagesConfig(num_images=4, size=64, shapes=3, seed=0)
    a, b = read_synthetic_images(cfg), read_synthetic_images(cfg)
    assert [it.id for it in a] == [f"synthetic_{i:05d}" for i in range(4)]
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
    other = read_synthetic_images(SyntheticImagesConfig(num_images=4, size=64, seed=1))
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(other[0].image))
    # The pictures differ from each other, and each is the size asked for.
    assert len({np.asarray(it.image).tobytes() for it in a}) == 4
    for it in a:
        assert it.image_path is None and it.has_image and it.references == [] and it.target is None
        img = it.open_image()
        assert img.mode == "RGB" and img.size == (64, 64)
    check_images(a)  # images in memory count as images


def test_synthetic_image_pixels_follow_the_scene():
    """The top shape's colour sits at its centre and the background at a corner a shape cannot
    reach (shapes stay inside the middle of the picture)."""
    size = 96
    for index in range(12):
        sc = scene(7, index, size, shapes=3)
        pixels = np.asarray(render(sc, size))  # (H, W, 3)
        top = sc.shapes[-1]
        x0, y0, x1, y1 = top.box
        # Inside every shape: its box centre; a triangle's centroid sits lower, at 2/3 height.
        cy = (y0 + 2 * y1) // 3 if top.kind == "triangle" else (y0 + y1) // 2
        assert tuple(pixels[cy, (x0 + x1) // 2]) == PALETTE[top.colour], (index, top)
        assert tuple(pixels[0, 0]) == PALETTE[sc.background]
        assert top.colour != sc.background
        assert " on a " in sc.describe()


def test_synthetic_images_dataset_from_the_config():
    items = load_dataset(_dataset_cfg("synthetic_images", Path("/nonexistent"),
                                      **{"subset.n": 2, "synthetic.size": 32}))
    assert [it.id for it in items] == ["synthetic_00000", "synthetic_00001"]
    whole = read_synthetic_images(SyntheticImagesConfig(num_images=8, size=32, seed=0))
    assert np.array_equal(np.asarray(items[1].image), np.asarray(whole[1].image))
    assert len(load_dataset(_dataset_cfg("synthetic_images", Path("/nonexistent")))) == 8
    with pytest.raises(ConfigError, match="dataset.synthetic.num_images must be >= 1"):
        load_dataset(_dataset_cfg("synthetic_images", Path("/x"), **{"synthetic.num_images": 0}))


def test_clip_objective_reads_an_image_in_memory_like_a_file(tiny_clip, tmp_path):
    from fuse_repro.objectives import ClipImageSimilarity

    item = read_synthetic_images(SyntheticImagesConfig(num_images=1, size=48))[0]
    path = tmp_path / "0.png"
    item.image.save(path)  # PNG is lossless: the same pixels
    in_memory, from_file = (ClipImageSimilarity(tiny_clip, None, 1.0) for _ in range(2))
    in_memory.prepare(item)
    from_file.prepare(Item(id="f", image_path=str(path)))
    assert in_memory.image_features is not None
    assert np.allclose(in_memory.image_features.numpy(), from_file.image_features.numpy())


def test_synthetic_captions_get_no_caption_metrics_and_say_why():
    from fuse_repro.scoring import score_captions
    from tests.helpers import scoring_options

    items = read_synthetic_images(SyntheticImagesConfig(num_images=2, size=16))
    metrics, _rows = score_captions({it.id: "a red circle" for it in items}, items,
                                   scoring_options(metrics=("Bleu", "CIDEr")))
    assert not metrics.get("metrics")
    assert "reference" in json.dumps(metrics.get("unavailable"))
