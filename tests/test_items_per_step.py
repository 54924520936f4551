"""Several items per step (issue 16 item 4, ``search.items_per_step``): items searched in
lockstep, their CLIP candidates in shared batches, get the caption they get alone, with the
same history and losses up to float32 rounding; resume after a crash stays per item; and ``search.eval_dtype`` refuses lower
precision off CUDA in one line."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from fuse_repro.adapter import fit_adapter
from fuse_repro.bridge import Bridge
from fuse_repro.config import AdapterConfig, CorpusConfig, SearchConfig
from fuse_repro.errors import ConfigError
from fuse_repro.objectives import ClipImageSimilarity, Sentiment
from fuse_repro.search import loop as search_loop
from fuse_repro.search import search_caption, search_items
from fuse_repro.search.step import eval_precision
from fuse_repro import captioner as captioner_lib

SMALL_FIT = AdapterConfig(words_per_bucket=256, heldout_words=16, corpus=CorpusConfig(max_words=20000))


@pytest.fixture(scope="module")
def objectives(tiny_gpt2, tiny_clip, tiny_roberta, model_cache_dir):
    """CLIP (prefix-cached, shared batches) + sentiment (full path, per item)."""
    clip_adapter = fit_adapter(tiny_gpt2, tiny_clip, SMALL_FIT, model_cache_dir)
    senti_adapter = fit_adapter(tiny_gpt2, tiny_roberta, SMALL_FIT, model_cache_dir)
    clip = ClipImageSimilarity(tiny_clip, Bridge(tiny_gpt2, tiny_clip, clip_adapter), weight=1.0)
    senti = Sentiment(tiny_roberta, Bridge(tiny_gpt2, tiny_roberta, senti_adapter), weight=0.5,
                      sentiment=next(iter(tiny_roberta.id2label.values())))
    return [clip, senti]


def image_items(n):
    colors = [(230, 20, 20), (20, 200, 40), (30, 30, 220), (240, 240, 0), (10, 10, 10)]
    return [SimpleNamespace(id=f"img{k}", image=Image.new("RGB", (48, 40), colors[k % len(colors)]),
                            sentiment=None) for k in range(n)]


def assert_same_search(together, alone):
    """Caption, ids, steps and evaluation count identical; losses and every history entry equal
    up to float32 rounding (1e-6 relative): a shared batch has other shapes (other items' beams
    and candidates pad it differently), and BLAS/attention kernels may round a row differently
    for another batch shape. Nothing is approximated beyond that."""
    a, b = dataclasses.asdict(together), dataclasses.asdict(alone)
    for key in ("caption", "generated", "ids", "steps", "evaluations"):
        assert a[key] == b[key], key
    assert len(a["history"]) == len(b["history"])
    for x, y in zip([a["losses"], *a["history"]], [b["losses"], *b["history"]]):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-7), k


@pytest.mark.parametrize("method", ["fuse", "lm_only"])
def test_items_together_equal_items_alone(tiny_gpt2, objectives, method):
    items = image_items(5)
    cfg = SearchConfig(method=method, steps=4, top_k=6, beam_width=2, eval_chunk=7,
                       stop_at_sentence_end=True, min_steps=1)
    alone = {it.id: search_caption(it, tiny_gpt2, objectives, cfg, 1.0, seed=3) for it in items}
    together = list(search_items(items, tiny_gpt2, objectives, dataclasses.replace(cfg, items_per_step=3), 1.0, 3))
    assert sorted(it.id for it, _, _ in together) == sorted(alone)
    for item, result, seconds in together:
        assert seconds >= 0
        assert_same_search(result, alone[item.id])


def test_shared_batches_really_mix_items(tiny_gpt2, objectives, monkeypatch):
    """The CLIP features of a lockstep step come from one call over every item's candidates."""
    calls = []
    real = search_loop.prefix_cached_features

    def spy(model, ext, chunk):
        calls.append(len(ext.beams))
        return real(model, ext, chunk)

    monkeypatch.setattr(search_loop, "prefix_cached_features", spy)
    cfg = SearchConfig(steps=2, top_k=4, beam_width=2, items_per_step=3)
    list(search_items(image_items(3), tiny_gpt2, objectives, cfg, 1.0, 0))
    assert calls == [3, 6]  # 3 items x 1 beam, then 3 items x 2 beams, in one call each


def test_resume_is_per_item_with_several_items_per_step(tiny_gpt2, objectives, tmp_path, monkeypatch):
    captioner = captioner_lib.Captioner(tiny_gpt2, objectives, 1.0, {})
    items = image_items(4)
    cfg = SearchConfig(steps=2, top_k=5, beam_width=2, items_per_step=2)
    full = captioner_lib.caption_items(items, captioner, cfg, 0, tmp_path / "full")
    alone = captioner_lib.caption_items(items, captioner, dataclasses.replace(cfg, items_per_step=1), 0,
                                        tmp_path / "alone")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "losses", "history")}  # noqa: E731
                          for r in rows]
    assert strip(full) == strip(alone)

    real, calls = search_loop.step_together, {"n": 0}

    def crashing(states):
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of the second group
            raise KeyboardInterrupt("killed")
        return real(states)

    monkeypatch.setattr(search_loop, "step_together", crashing)
    with pytest.raises(KeyboardInterrupt):
        captioner_lib.caption_items(items, captioner, cfg, 0, tmp_path / "crash")
    monkeypatch.setattr(search_loop, "step_together", real)
    written = [json.loads(x)["id"] for x in (tmp_path / "crash" / "captions.jsonl").read_text().splitlines()]
    assert written == ["img0", "img1"]
    resumed = captioner_lib.caption_items(items, captioner, cfg, 0, tmp_path / "crash")
    exact = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert exact(resumed) == exact(full)  # the same groups: bit for bit


def test_a_failing_item_does_not_sink_its_group(tiny_gpt2, objectives, tmp_path):
    captioner = captioner_lib.Captioner(tiny_gpt2, objectives, 1.0, {})
    items = image_items(3)
    items[1] = SimpleNamespace(id="bad", image=None, image_path=None, sentiment=None)
    out = captioner_lib.caption_items(items, captioner, SearchConfig(steps=1, top_k=4, beam_width=1, items_per_step=3),
                                      0, tmp_path / "run")
    assert [r["id"] for r in out] == ["img0", "img2"]
    errors = [json.loads(x) for x in (tmp_path / "run" / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["id"] == "bad" and "no image" in errors[0]["error"]


def test_eval_dtype_is_refused_off_cuda(tiny_gpt2, objectives):
    with pytest.raises(ConfigError) as err:
        search_caption(image_items(1)[0], tiny_gpt2, objectives, SearchConfig(eval_dtype="bfloat16"), 1.0, 0)
    assert "\n" not in str(err.value) and "search.eval_dtype='bfloat16'" in str(err.value)
    assert "float32" in str(err.value)
    with pytest.raises(ConfigError):
        captioner_lib.check_search(SearchConfig(eval_dtype="float16"))  # not an option at all
    with pytest.raises(ConfigError):
        SearchConfig(items_per_step=0)
    with pytest.raises(ConfigError), eval_precision("tf32", "cpu"):
        pass
    with eval_precision("bfloat16", "cpu", allow_cpu=True):  # the agreement benchmark only
        assert torch.is_autocast_enabled("cpu")
