"""Caption scoring (fuse_repro/coco_metrics.py, sentiment.py, scoring.py): hand-checked cases,
published-score reproduction, missing SPICE, sentiment accuracy, the captions.jsonl and COCO
results JSON -> metrics.json path and stage=score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fuse_repro import coco_metrics
from fuse_repro.coco_metrics import MeteorScorer, bleu, cider, ptb_tokenize, rouge_l, spice_status
from fuse_repro.data import Item, read_coco_captions, read_embedded_refs
from fuse_repro.errors import FuseError
from fuse_repro.records import captions_by_id, read_caption_rows
from fuse_repro.scoring import (
    score_captions,
    score_captions_file,
    strip_caption_prefix,
)
from fuse_repro.sentiment import SentimentLabelError, sentiment_label_ids
from tests.helpers import REPO, SHARED, needs_shared, root_config, scoring_options

FAST = ("Bleu", "ROUGE_L", "CIDEr")  # the metrics without METEOR's ~15 s Java start-up


def read_captions_jsonl(path: Path, method: str | None = None) -> dict[str, str]:
    return captions_by_id(read_caption_rows(path), method, where=str(path))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- hand-checked


def test_bleu_identical_caption_is_one():
    b = bleu({"1": ["a man riding a horse on a beach"]}, {"1": "a man riding a horse on a beach"},
             ["1"])
    assert [round(s, 9) for s in b.scores] == [1.0, 1.0, 1.0, 1.0]
    assert (b.testlen, b.reflen, b.guess, b.correct) == (8, 8, [8, 7, 6, 5], [8, 7, 6, 5])


def test_bleu_by_hand():
    # candidate "a b c d" vs reference "a b c e": clipped matches 3/4, 2/3, 1/2, 0/1.
    b = bleu({"1": ["a b c e"]}, {"1": "a b c d"}, ["1"])
    assert b.scores[0] == pytest.approx(3 / 4)
    assert b.scores[1] == pytest.approx(math.sqrt(3 / 4 * 2 / 3))
    assert b.scores[2] == pytest.approx((3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3))
    assert b.scores[3] < 1e-3  # no 4-gram match: only pycocoevalcap's 1e-15 floor remains
    assert (b.testlen, b.reflen, b.guess, b.correct) == (4, 4, [4, 3, 2, 1], [3, 2, 1, 0])
    # brevity penalty: 2 words against a 4-word reference -> exp(1 - 4/2)
    short = bleu({"1": ["a b c d"]}, {"1": "a b"}, ["1"])
    assert short.scores[0] == pytest.approx(math.exp(-1))
    assert short.reflen == 4 and short.testlen == 2


def test_rouge_l_by_hand():
    # LCS("a b c d", "a c d e f") = 3; P = 3/4, R = 3/5; F_beta with beta = 1.2
    p, r, beta2 = 3 / 4, 3 / 5, 1.2**2
    score, per = rouge_l({"1": ["a c d e f"]}, {"1": "a b c d"}, ["1"])
    assert score == pytest.approx((1 + beta2) * p * r / (r + beta2 * p))
    assert per == [score]


def test_cider_by_hand():
    # Two images, each candidate equal to its one reference, n-grams unique to each image:
    # idf = log 2 for every n-gram; cosine 1 for n = 1, 2 and 0 (empty) for n = 3, 4, so
    # CIDEr-D = 10 * mean(1, 1, 0, 0) = 5 for each image.
    score, per = cider({"A": ["a b"], "B": ["c d"]}, {"A": "a b", "B": "c d"}, ["A", "B"])
    assert score == pytest.approx(5.0) and per == pytest.approx([5.0, 5.0])


def test_ptb_tokenize_matches_pycocoevalcap_rules():
    out = ptb_tokenize({
        "1": ["A man, riding a horse.", "Two dogs -- playing!"],
        "2": [""],
        "3": ["An image of\na café\u2028“dog”"],
    })
    assert out == {"1": ["a man riding a horse", "two dogs playing"], "2": [""],
                   "3": ["an image of a café dog"]}


def test_strip_prefix():
    assert strip_caption_prefix("An image of a dog.", "An image of") == ("a dog.", True)
    assert strip_caption_prefix("  an IMAGE of  a dog", "An image of") == ("a dog", True)
    assert strip_caption_prefix("A dog.", "An image of") == ("A dog.", False)
    assert strip_caption_prefix("An image of a dog", None) == ("An image of a dog", False)


# ---------------------------------------------------------------------------- SPICE missing


def test_spice_status_detects_missing_jars(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "spice-1.0.jar").write_bytes(b"")
    ok, reason = spice_status(tmp_path)
    assert not ok
    assert "stanford-corenlp-3.6.0.jar" in reason and "stanford-corenlp-3.6.0-models.jar" in reason
    assert str(tmp_path / "lib") in reason
    assert "stanford-corenlp-full-2015-12-09.zip" in reason  # how to install them
    (tmp_path / "lib" / "stanford-corenlp-3.6.0.jar").write_bytes(b"")
    (tmp_path / "lib" / "stanford-corenlp-3.6.0-models.jar").write_bytes(b"")
    assert spice_status(tmp_path) == (True, None)  # all three jars present (Java is too)


def test_missing_spice_still_scores_the_rest(tmp_path, monkeypatch):
    # Never let pycocoevalcap try its CoreNLP download.
    from pycocoevalcap.spice import get_stanford_models as gsm

    def no_download(*args, **kwargs):
        raise AssertionError("SPICE download attempted")

    monkeypatch.setattr(gsm, "urlretrieve", no_download)
    if spice_status()[0]:  # jars installed on this machine: simulate their absence
        missing = spice_status(tmp_path)
        monkeypatch.setattr(coco_metrics, "spice_status", lambda *a: missing)
    items = [Item(id="1", references=["a dog runs on the grass", "a brown dog"]),
             Item(id="2", references=["a red bus on a street"])]
    metrics, per = score_captions({"1": "a dog on grass", "2": "a bus"}, items,
                                  scoring_options(metrics=("Bleu", "CIDEr", "SPICE")))
    assert "SPICE" not in metrics["metrics"]
    assert "stanford-corenlp-3.6.0" in metrics["unavailable"]["SPICE"]
    assert set(metrics["metrics"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}
    assert 0 < metrics["metrics"]["Bleu_1"] <= 1
    assert all("SPICE" not in row and "CIDEr" in row for row in per)


def test_spice_output_parsing_with_a_stand_in_jar(monkeypatch):
    """SPICE's jars are absent here, so a stand-in for its Java call writes the output file
    SPICE 1.0 writes; checks the command, the per-caption values and the per-domain means."""
    import subprocess as sp

    real_run = sp.run
    seen = {}

    def fake_run(cmd, *args, **kwargs):
        if "spice-1.0.jar" not in cmd:
            return real_run(cmd, *args, **kwargs)
        seen["cmd"] = cmd
        payload = json.loads(Path(cmd[cmd.index("spice-1.0.jar") + 1]).read_text())
        out = [{"image_id": p["image_id"],
                "scores": {"All": {"f": len(p["test"].split()) / 10, "pr": 0.5, "re": 0.5}}}
               for p in payload]
        Path(cmd[cmd.index("-out") + 1]).write_text(json.dumps(out))
        return sp.CompletedProcess(cmd, 0, b"", b"")

    monkeypatch.setattr(coco_metrics, "spice_status", lambda *a: (True, None))
    monkeypatch.setattr(sp, "run", fake_run)
    items = [Item(id="1", references=["a dog"], domain="in-domain"),
             Item(id="2", references=["a cat"], domain="out-domain"),
             Item(id="3", references=["a cow"], domain="out-domain")]
    caps = {"1": "a dog", "2": "a small cat", "3": "a big brown cow"}
    metrics, per = score_captions(caps, items, scoring_options(metrics=("SPICE",),
                                                              spice_cache_dir="/tmp/sc"))
    assert seen["cmd"][seen["cmd"].index("-cache") + 1] == "/tmp/sc"
    assert {"-subset", "-silent"} <= set(seen["cmd"])
    assert [r["SPICE"] for r in per] == pytest.approx([0.2, 0.3, 0.4])
    assert metrics["metrics"]["SPICE"] == pytest.approx(0.3)
    assert metrics["domains"]["out-domain"]["SPICE"] == pytest.approx(0.35)
    assert "SPICE" not in metrics["unavailable"]

    def crash(cmd, *args, **kwargs):
        if "spice-1.0.jar" not in cmd:
            return real_run(cmd, *args, **kwargs)
        return sp.CompletedProcess(cmd, 1, b"", b"java.lang.OutOfMemoryError")

    monkeypatch.setattr(sp, "run", crash)
    metrics, _ = score_captions(caps, items, scoring_options(metrics=("CIDEr", "SPICE")))
    assert "OutOfMemoryError" in metrics["unavailable"]["SPICE"]
    assert "CIDEr" in metrics["metrics"] and "SPICE" not in metrics["metrics"]


# ---------------------------------------------------------------------------- files, options


def test_score_captions_file_outputs_are_deterministic(tmp_path):
    items = [Item(id=str(i), references=[f"a photo of {w} on a table", f"{w} on a table"])
             for i, w in enumerate(["apples", "a cup", "two books", "a lamp", "keys",
                                    "a phone", "a plant", "bread", "cheese", "a clock", "pens"])]
    rows = [{"id": it.id, "caption": f"An image of {it.references[1]}", "method": "fuse",
             "seconds": 1.5} for it in reversed(items)]
    path = _write_jsonl(tmp_path / "captions.jsonl", rows)
    opts = scoring_options(metrics=FAST, strip_prefix="An image of")
    metrics = score_captions_file(path, items, opts, dataset={"name": "toy"})
    text = (tmp_path / "metrics.json").read_text()
    per_text = (tmp_path / "per_caption.jsonl").read_text()
    assert json.loads(text) == metrics
    assert text == json.dumps(metrics, sort_keys=True, indent=2) + "\n"
    assert metrics["strip_prefix"] == {"prefix": "An image of", "num_stripped": 11}
    assert metrics["method"] == "fuse" and metrics["dataset"] == {"name": "toy"}
    assert metrics["captions_file"] == "captions.jsonl"
    assert metrics["num_scored"] == 11 and metrics["num_missing"] == 0
    per = [json.loads(line) for line in per_text.splitlines()]
    assert [r["id"] for r in per] == [str(i) for i in range(11)]  # numeric order: 10 after 9
    assert per[0]["caption"] == "apples on a table"
    assert per[0]["caption_raw"] == "An image of apples on a table"
    assert per[0]["Bleu_4"] == pytest.approx(1.0)
    score_captions_file(path, items, opts, dataset={"name": "toy"})
    assert (tmp_path / "metrics.json").read_text() == text
    assert (tmp_path / "per_caption.jsonl").read_text() == per_text


def test_caption_and_item_mismatches(tmp_path):
    items = [Item(id="1", references=["a cat"]), Item(id="2", references=["a dog"])]
    with pytest.raises(ValueError, match=r"1 of 2 dataset items have no caption \(first: \['2'\]"):
        score_captions({"1": "a cat"}, items, scoring_options(metrics=FAST))
    metrics, per = score_captions({"1": "a cat"}, items,
                                  scoring_options(metrics=FAST, allow_missing=True))
    assert metrics["num_missing"] == 1 and [r["id"] for r in per] == ["1"]
    with pytest.raises(ValueError, match=r"caption ids are not in the dataset \(first: \['9'\]"):
        score_captions({"1": "a", "2": "b", "9": "c"}, items, scoring_options(metrics=FAST))
    dup = _write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "caption": "a"},
                                                {"id": "1", "caption": "b"}])
    with pytest.raises(ValueError, match="id '1' appears more than once"):
        read_captions_jsonl(dup)
    mixed = _write_jsonl(tmp_path / "mixed.jsonl", [{"id": 1, "caption": "a", "method": "fuse"},
                                                    {"id": 1, "caption": "b", "method": "lm"}])
    with pytest.raises(ValueError, match=r"several methods \['fuse', 'lm'\]"):
        read_captions_jsonl(mixed)
    assert read_captions_jsonl(mixed, method="lm") == {"1": "b"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "caption": "a"}\n{"id": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with 'id'"):
        read_captions_jsonl(bad)


def test_no_references_means_no_caption_metrics():
    metrics, per = score_captions({"a": "a dog"}, [Item(id="a", image_path="a.jpg")],
                                  scoring_options(metrics=FAST))
    assert metrics["metrics"] == {}
    assert metrics["unavailable"]["CIDEr"] == "no item has references"
    assert per == [{"id": "a", "caption": "a dog"}]


def test_nocaps_domains_are_scored_separately():
    refs = {"1": ["a bird on a branch"], "2": ["a small bird in a tree"],
            "3": ["a red car on a road"], "4": ["a fast car"], "5": ["a car and a bird"]}
    domain = {"1": "in-domain", "2": "in-domain", "3": "out-domain", "4": "out-domain",
              "5": "out-domain"}
    items = [Item(id=k, references=v, domain=domain[k]) for k, v in refs.items()]
    caps = {"1": "a bird", "2": "a bird in a tree", "3": "a car on a road", "4": "a car",
            "5": "a bird"}
    metrics, per = score_captions(caps, items, scoring_options(metrics=("CIDEr", "SPICE")))
    tok = ptb_tokenize(refs)
    res = {k: v for k, v in caps.items()}
    assert metrics["metrics"]["CIDEr"] == pytest.approx(cider(tok, res, list(refs))[0])
    assert metrics["domains"]["in-domain"]["CIDEr"] == pytest.approx(
        cider(tok, res, ["1", "2"])[0])
    assert metrics["domains"]["out-domain"]["CIDEr"] == pytest.approx(
        cider(tok, res, ["3", "4", "5"])[0])
    assert metrics["domains"]["out-domain"]["num_scored"] == 3
    assert per[0]["domain"] == "in-domain"


def test_scoring_config_from_the_config_file():
    opts = root_config(["paths.cache_dir=/c", "device=cpu"]).scoring
    assert opts.metrics == ["Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE"]
    assert opts.spice.cache_dir == "/c/spice" and opts.sentiment.device == "cpu"
    assert opts.sentiment.classifier == "cardiffnlp/twitter-roberta-base-sentiment-latest"
    assert root_config(["scoring.metrics=[bleu,rouge]"]).scoring.metrics == ["Bleu", "ROUGE_L"]
    with pytest.raises(ValueError, match="unknown metric 'WER'"):
        root_config(["scoring.metrics=[WER]"])
    with pytest.raises(ValueError, match=r"unknown key (scoring\.)?spice\.heap"):
        root_config(["+scoring.spice.heap=1G"])
    with pytest.raises(ValueError, match="sentiment.rule.*(must be|is not) one of"):
        root_config(["scoring.sentiment.rule=vote"])


def test_score_stage(tmp_path):
    from fuse_repro.stages import score as score_stage

    (tmp_path / "text_targets.json").write_text(json.dumps(
        [{"id": i, "target": t, "references": [t, f"there is {t}"]}
         for i, t in enumerate(["a red bus", "a green tree", "a blue car"])]))
    _write_jsonl(tmp_path / "captions.jsonl",
                 [{"id": str(i), "caption": c} for i, c in enumerate(["a red bus",
                                                                      "a tree", "a car"])])
    overrides = ["stage=score", "logger=none", f"paths.data_dir={tmp_path}",
                 f"paths.cache_dir={tmp_path}", "dataset=text_targets",
                 f"scoring.metrics=[{','.join(FAST)}]"]
    cfg = root_config(overrides, output_dir=tmp_path)
    out = score_stage.run(cfg, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert out["metrics"] == saved
    assert out["objective"] == saved["metrics"]["CIDEr"] > 0
    assert saved["dataset"]["name"] == "text_targets" and saved["num_scored"] == 3
    cfg = root_config([*overrides, f"scoring.captions={tmp_path / 'nope.jsonl'}"],
                      output_dir=tmp_path)
    with pytest.raises(FuseError, match="nope.jsonl"):
        score_stage.check(cfg)


def test_score_stage_takes_a_coco_results_file_as_a_labelled_external_row(tmp_path):
    """A published system's standard COCO results JSON is scored by the same code into this run's
    folder (not beside the input), labelled external, and shows in the offline COCO table as an
    external row next to ours."""
    from fuse_repro.stages import score as score_stage
    from fuse_repro.tables import build_tables

    (tmp_path / "text_targets.json").write_text(json.dumps(
        [{"id": 100 + i, "target": t, "references": [t, f"there is {t}"]}
         for i, t in enumerate(["a red bus", "a green tree", "a blue car"])]))
    published = tmp_path / "published"
    published.mkdir()
    results = published / "zerocap_coco_results.json"
    results.write_text(json.dumps([{"image_id": 100, "caption": "a red bus"},
                                   {"image_id": 101, "caption": "a tree"},
                                   {"image_id": 102, "caption": "a car"}]))
    run_dir = tmp_path / "outputs" / "zerocap_scored" / "2024-01-01_00-00-00"
    cfg = root_config(["stage=score", "logger=none", f"paths.data_dir={tmp_path}",
                       f"paths.cache_dir={tmp_path}", "experiment_name=zerocap_scored",
                       "dataset=text_targets", "dataset.name=coco_text_targets",
                       f"scoring.metrics=[{','.join(FAST)}]", f"scoring.captions={results}",
                       "scoring.label=ZeroCap"], output_dir=run_dir)
    out = score_stage.run(cfg, run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(p.name for p in published.iterdir()) == ["zerocap_coco_results.json"]
    assert saved == out["metrics"] and saved["num_scored"] == 3
    assert out["objective"] == out["CIDEr"] == saved["metrics"]["CIDEr"] > 0
    assert (saved["captions_format"], saved["label"], saved["source"]) == (
        "coco_results", "ZeroCap", "external")
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["source"], info["label"], info["dataset"]) == ("external", "ZeroCap",
                                                               "coco_text_targets")
    # Our own run on the same targets, as a pipeline method folder would hold it.
    ours = tmp_path / "outputs" / "coco_text_targets" / "2024-01-02_00-00-00" / "fuse"
    ours.mkdir(parents=True)
    (ours / "metrics.json").write_text(json.dumps(
        {"dataset": {"name": "coco_text_targets"}, "method": "fuse",
         "metrics": {"Bleu_1": 0.5, "Bleu_4": 0.1, "METEOR": 0.2, "ROUGE_L": 0.3, "CIDEr": 0.4}}))
    (ours / "run_info.json").write_text(json.dumps(
        {"experiment": "coco_text_targets", "config_hash": "abcdef0123456789", "method": "fuse"}))
    summary = build_tables([tmp_path / "outputs"], tmp_path / "tables", formats=["md"])
    assert summary["rows"]["table_coco_text"] == 2 and summary["num_used"] == 2
    md = (tmp_path / "tables" / "table_coco_text.md").read_text().splitlines()
    cider = 100 * saved["metrics"]["CIDEr"]
    assert f"| ZeroCap | external | {100 * saved['metrics']['Bleu_1']:.2f} | " \
           f"{100 * saved['metrics']['Bleu_4']:.2f} | – | " \
           f"{100 * saved['metrics']['ROUGE_L']:.2f} | {cider:.2f} |" in md
    assert "| coco_text_targets [fuse] | ours (abcdef01) | 50.00 | 10.00 | 20.00 | 30.00 | 40.00 |" \
        in md
    assert not any("ZeroCap" in line and "ours" in line for line in md)


# ---------------------------------------------------------------------------- sentiment


def _tiny_classifier(path: Path, id2label: dict[int, str], bias: list[float]) -> Path:
    """A random-weight RoBERTa classifier whose output layer is zero but for its bias, so the
    predicted class is known in advance; saved with a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    words = ["<pad>", "<s>", "</s>", "<unk>", "a", "dog", "on", "the", "grass", "sad", "happy"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    config = RobertaConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32,
                           max_position_embeddings=64, pad_token_id=0,
                           num_labels=len(id2label), id2label=id2label,
                           label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.out_proj.weight.zero_()
        model.classifier.out_proj.bias.copy_(torch.tensor(bias))
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def positive_classifier(tmp_path_factory) -> Path:
    # Labels in mixed case, as real checkpoints spell them; the bias makes "Positive" win.
    return _tiny_classifier(tmp_path_factory.mktemp("clf_pos"),
                            {0: "NEGATIVE", 1: "neutral", 2: "Positive"}, [0.0, 0.0, 50.0])


def test_sentiment_accuracy_with_tiny_classifier(positive_classifier):
    items = [Item(id=str(i), references=["a dog on the grass"],
                  sentiment="positive" if i < 3 else "negative") for i in range(5)]
    caps = {str(i): "a happy dog on the grass" if i < 3 else "a sad dog" for i in range(5)}
    opts = scoring_options(metrics=("Bleu",), classifier=str(positive_classifier),
                          batch_size=2)
    metrics, per = score_captions(caps, items, opts)
    sent = metrics["sentiment"]
    assert sent["accuracy"] == pytest.approx(3 / 5)
    assert (sent["num_correct"], sent["num_scored"]) == (3, 5)
    assert sent["label_ids"] == {"negative": 0, "positive": 2}
    assert sent["wanted"] == ["negative", "positive"] and sent["rule"] == "argmax"
    assert per[0]["sentiment"]["predicted"] == "Positive" and per[0]["sentiment"]["correct"]
    assert per[4]["sentiment"] == {"wanted": "negative", "predicted": "Positive",
                                   "p_wanted": pytest.approx(0.0, abs=1e-9), "correct": False}


def test_sentiment_rules_and_label_errors(tmp_path):
    # neutral dominates: argmax never matches; pos_vs_neg picks negative over positive.
    clf = _tiny_classifier(tmp_path / "neutral", {0: "negative", 1: "neutral", 2: "positive"},
                           [5.0, 50.0, 0.0])
    items = [Item(id="1", sentiment="positive"), Item(id="2", sentiment="negative")]
    caps = {"1": "a dog", "2": "a dog"}
    argmax = score_captions(caps, items, scoring_options(metrics=(),
                                                        classifier=str(clf)))[0]
    assert argmax["sentiment"]["accuracy"] == 0.0
    pvn = score_captions(caps, items, scoring_options(
        metrics=(), classifier=str(clf), rule="pos_vs_neg"))[0]
    assert pvn["sentiment"]["accuracy"] == 0.5
    bad = _tiny_classifier(tmp_path / "bad", {0: "LABEL_0", 1: "LABEL_1"}, [0.0, 1.0])
    with pytest.raises(SentimentLabelError, match=r"LABEL_0.*none matches 'negative'"):
        score_captions(caps, items, scoring_options(metrics=(), classifier=str(bad)))
    assert sentiment_label_ids({0: "Negative", 1: "POSITIVE", 2: "other"}) == {
        "negative": 0, "positive": 1}


def test_sentiment_without_classifier_is_recorded(tmp_path):
    items = [Item(id="1", references=["a dog"], sentiment="positive")]
    metrics = score_captions({"1": "a dog"}, items, scoring_options(
        metrics=("Bleu",), classifier=str(tmp_path / "no_such_model")))[0]
    assert "no_such_model" in metrics["unavailable"]["sentiment_accuracy"]
    assert "Bleu_1" in metrics["metrics"] and "sentiment" not in metrics


# ---------------------------------------------------------------------------- METEOR process


@pytest.mark.slow
def test_meteor_process_is_reused_and_closed():
    with MeteorScorer() as scorer:
        proc = scorer._proc
        same, per = scorer.score({"1": ["a man riding a horse"]}, {"1": "a man riding a horse"},
                                 ["1"])
        other, _ = scorer.score({"1": ["a man riding a horse"]}, {"1": "a bowl of soup"}, ["1"])
        assert scorer._proc is proc  # one Java process for both calls
    assert scorer._proc is None and proc.poll() is not None
    assert same == pytest.approx(per[0]) and 0.9 < same <= 1.0 and other < 0.1


# ---------------------------------------------------------------------------- published scores


@needs_shared
@pytest.mark.slow
def test_reproduces_coco_caption_demo(tmp_path):
    """tylin/coco-caption demo: fakecap results vs the reduced val2014 references."""
    demo = SHARED / "pycocoevalcap_demo"
    results = json.loads((demo / "captions_val2014_fakecap_results.json").read_text())
    ids = {str(r["image_id"]) for r in results}
    items = [it for it in read_coco_captions(demo / "en_captions_val2014.json") if it.id in ids]
    assert len(items) == 1000
    path = _write_jsonl(tmp_path / "captions.jsonl",
                        [{"id": str(r["image_id"]), "caption": r["caption"]} for r in results])
    metrics = score_captions_file(path, items, scoring_options())
    m = metrics["metrics"]
    published = {"Bleu_1": 0.579, "Bleu_2": 0.404, "Bleu_3": 0.279, "Bleu_4": 0.191,
                 "METEOR": 0.195, "ROUGE_L": 0.396, "CIDEr": 0.600}
    assert {k: round(m[k], 3) for k in published} == published
    assert metrics["bleu_stats"] == {"testlen": 9893, "reflen": 9855,
                                     "guess": [9893, 8893, 7893, 6893],
                                     "correct": [5732, 2510, 1043, 423]}
    if "SPICE" in m:  # only where the CoreNLP jars are installed
        assert round(m["SPICE"], 3) == 0.133
    else:
        assert "SPICE" in metrics["unavailable"]
    # Tokenization equals the demo's own PTB-tokenized files, caption for caption.
    tok_res = json.loads((demo / "en_captions_val2014_results_after_tokenization.json").read_text())
    per = [json.loads(line) for line in (tmp_path / "per_caption.jsonl").read_text().splitlines()]
    assert {r["id"]: [r["tokenized"]] for r in per} == tok_res
    tok_refs = json.loads(
        (demo / "en_captions_val2014_references_after_tokenization.json").read_text())
    assert ptb_tokenize({it.id: it.references for it in items}) == tok_refs


@needs_shared
@pytest.mark.slow
def test_reproduces_magic_published_scores(tmp_path):
    """yxuansu/MAGIC's Karpathy-test outputs against their embedded references."""
    path = SHARED / "magic" / "mscoco_magic_result.json"
    items = read_embedded_refs(path)
    rows = [{"id": it.id, "caption": entry["prediction"], "method": "magic"}
            for it, entry in zip(items, json.loads(path.read_text()))]
    captions = _write_jsonl(tmp_path / "captions.jsonl", rows)
    metrics = score_captions_file(captions, items,
                                  scoring_options(metrics=("Bleu", "METEOR", "ROUGE_L", "CIDEr")))
    m = metrics["metrics"]
    published = {"Bleu_1": 0.568, "Bleu_2": 0.358, "Bleu_3": 0.214, "Bleu_4": 0.129,
                 "METEOR": 0.174, "ROUGE_L": 0.399, "CIDEr": 0.493}
    assert {k: round(m[k], 3) for k in published} == published
    stats = metrics["bleu_stats"]
    assert (stats["testlen"], stats["reflen"], stats["correct"]) == (
        47153, 47168, [26801, 9496, 2857, 902])
    assert metrics["num_scored"] == 4982 and metrics["method"] == "magic"
