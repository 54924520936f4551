"""stage=fidelity: the ranking metrics against hand-computed cases and a float64 reference, the
random-map control on a toy whose true map is known, and the measurement on tiny real-tokenizer
models (the fuse score it uses is the one ``propose`` ranks by)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fuse_repro.fidelity import FidelityConfig, control_bridges, exact_goodness
from fuse_repro.fidelity_metrics import (
    average_ranks,
    mean_se,
    recall_at_k,
    regret,
    spearman,
    state_metrics,
)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def reference_ranks(x: list[float]) -> list[float]:
    """O(K^2) float64 reference: 1 + (# smaller) + (# equal others) / 2."""
    return [1.0 + sum(y < v for y in x) + (sum(y == v for y in x) - 1) / 2.0 for v in x]


def reference_spearman(pred: list[float], loss: list[float]) -> float:
    a = np.array(reference_ranks(pred), dtype=np.float64)
    b = np.array(reference_ranks([-v for v in loss]), dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def test_average_ranks_hand_and_reference() -> None:
    assert average_ranks([10.0, 30.0, 20.0]).tolist() == [1.0, 3.0, 2.0]
    # two tied at ranks 2 and 3 -> 2.5 each
    assert average_ranks([1.0, 5.0, 5.0, 7.0]).tolist() == [1.0, 2.5, 2.5, 4.0]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=40).astype(float).tolist()  # many ties
    assert average_ranks(x).tolist() == reference_ranks(x)


def test_spearman_hand_cases() -> None:
    loss = [0.1, 0.2, 0.3, 0.4]
    assert spearman([4, 3, 2, 1], loss) == pytest.approx(1.0)  # best predicted = lowest loss
    assert spearman([1, 2, 3, 4], loss) == pytest.approx(-1.0)
    # d = rank differences (0, 0, 1, -1): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([4, 3, 1, 2], loss) == pytest.approx(0.8)
    # a constant predictor says nothing: defined as 0, not NaN
    assert spearman([5, 5, 5, 5], loss) == 0.0
    # ties: pred ranks (1, 2.5, 2.5, 4), truth ranks (1, 2, 3, 4): rho = 4.5 / sqrt(4.5 * 5)
    assert spearman([0, 1, 1, 2], [4, 3, 2, 1]) == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))


def test_spearman_matches_float64_reference() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        pred = rng.integers(0, 8, size=30).astype(float).tolist()
        loss = rng.normal(size=30).round(1).tolist()
        assert spearman(pred, loss) == pytest.approx(reference_spearman(pred, loss), abs=1e-12)


def test_recall_hand_cases_with_ties() -> None:
    loss = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert recall_at_k([4, 3, 2, 1, 0], loss, 2) == 1.0
    assert recall_at_k([0, 1, 2, 3, 4], loss, 2) == 0.0
    assert recall_at_k([4, 0, 3, 2, 1], loss, 2) == 0.5  # picks 0 and 2; true best 0 and 1
    # predicted ties at the k-th value fill the free places by their expected share: three tied
    # candidates (two of them true best) for two places -> 2 * 2/3 hits, recall 2/3
    assert recall_at_k([5, 5, 5, 0], [0.0, 1.0, 2.0, 3.0], 2) == pytest.approx(2 / 3)
    # one strictly above, then three tied for one place, one of them a true best -> (1 + 1/3) / 2
    assert recall_at_k([9, 5, 5, 5], [0.0, 1.0, 2.0, 3.0], 2) == pytest.approx((1 + 1 / 3) / 2)
    # true ties at the k-th loss are all "true best": losses (0, 1, 1, 5), k=2 -> true best
    # {0, 1, 2}; predicting {2, 3} finds one of the two places
    assert recall_at_k([0, 0, 9, 8], [0.0, 1.0, 1.0, 5.0], 2) == 0.5
    assert recall_at_k([0, 9, 8, 0], [0.0, 1.0, 1.0, 5.0], 2) == 1.0
    # a constant predictor scores chance, |true best| / K, never 1
    assert recall_at_k([1.0] * 8, list(range(8)), 2) == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="k=9"):
        recall_at_k([1.0] * 8, list(range(8)), 9)


def test_regret_and_mean_se() -> None:
    assert regret([0, 9, 1], [0.5, 0.7, 0.2]) == pytest.approx(0.5)  # picks 0.7, best 0.2
    assert regret([9, 0, 1], [0.2, 0.7, 0.5]) == 0.0
    assert regret([3, 3, 1], [0.2, 0.6, 0.0]) == pytest.approx(0.4)  # tie: mean of 0.2 and 0.6
    mean, se = mean_se([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1.0 / math.sqrt(3.0))
    assert math.isnan(mean_se([4.0])[1])
    assert set(state_metrics([1, 2], [2.0, 1.0], 16)) == {"spearman", "recall_at_k", "regret"}
    with pytest.raises(ValueError, match="non-finite"):
        spearman([1.0, float("nan")], [0.0, 1.0])


# ----------------------------------------------------------------------------------------------
# Controls on a toy whose true maps are known
# ----------------------------------------------------------------------------------------------

class LinearLoss:
    """A toy secondary objective linear in the target embeddings: ``sum_t w . e_t`` over real
    tokens. With the planted t-linear maps, the FUSE slot gradient predicts it exactly for words
    of the slot's bucket, and the secondary input gradient for one-token extensions."""

    name = "linear"

    def __init__(self, model, bridge, w: torch.Tensor) -> None:
        self.model, self.bridge, self.weight, self.w = model, bridge, 1.0, w

    def loss(self, tb) -> torch.Tensor:
        mask = tb.attention_mask.to(tb.embeds.dtype).unsqueeze(-1)  # (B, S_j, 1)
        return (tb.embeds * mask * self.w).sum(dim=(1, 2))  # (B,)

    @torch.no_grad()
    def evaluate(self, src_ids, chunk):
        return self.loss(self.bridge.lookup(src_ids))


@pytest.fixture(scope="module")
def toy_setup(tmp_path_factory):
    from fuse_repro.adapter import fit_adapter
    from fuse_repro.bridge import Bridge
    from fuse_repro.config import AdapterConfig, CorpusConfig
    from fuse_repro.testing.toy import make_toy_pair

    toy = make_toy_pair(n_words=1500, d_i=24, d_j=12, seed=0, max_len=4)
    corpus = tmp_path_factory.mktemp("toy_corpus") / "corpus.txt"
    corpus.write_text(" ".join(toy.words) + "\n", encoding="utf-8")
    cfg = AdapterConfig(max_tokens=4, words_per_bucket=100000, heldout_words=0, fit_dtype="float64",
                        corpus=CorpusConfig(kind="text_file", path=str(corpus)))
    adapter = fit_adapter(toy.source, toy.target, cfg, None)
    bridge = Bridge(toy.source, toy.target, adapter)
    w = torch.randn(12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return toy, LinearLoss(toy.target, bridge, w)


def _single_token_words(toy, length: int) -> list[int]:
    src, tgt = toy.source.tokenizer, toy.target.tokenizer
    return [src.word_ids(w)[0] for w in toy.words
            if len(src.word_ids(w)) == 1 and len(tgt.word_ids(w)) == length]


def test_random_maps_carry_no_signal_where_the_fitted_maps_are_exact(toy_setup) -> None:
    import copy

    from fuse_repro.search import slot_gradient

    toy, obj = toy_setup
    cand = _single_token_words(toy, 2)  # same bucket as the slot: FUSE is exact there
    assert len(cand) > 100
    base = toy.source.tokenizer.encode(" ".join(toy.words[:2]))
    true = obj.evaluate([base + [c] for c in cand], 256).numpy()

    def goodness(bridge) -> np.ndarray:
        twin = copy.copy(obj)
        twin.bridge = bridge
        return (-slot_gradient(toy.source, [twin], [base + [cand[0]]])[0, cand]).double().numpy()

    assert spearman(goodness(obj.bridge), true) > 0.999
    controls = control_bridges([obj], FidelityConfig(random_maps=8, overflow_control=False), seed=0)
    random_rho = [spearman(goodness(bridges[0]), true) for bridges in controls["random_maps"]]
    assert abs(float(np.mean(random_rho))) < 0.25, random_rho
    assert max(random_rho) < 0.9
    # the mean-embedding baseline is a constant map: no gradient, no ranking
    assert spearman(goodness(controls["mean_map"][0][0]), true) == 0.0


def test_exact_gradient_ranks_one_token_extensions_exactly(toy_setup) -> None:
    toy, obj = toy_setup
    one = _single_token_words(toy, 1)[:60]  # add exactly one target token
    two = _single_token_words(toy, 2)[:20]  # add two: outside the subset
    base = toy.source.tokenizer.encode(" ".join(toy.words[:2]))
    mask, good = exact_goodness([obj], base, one + two)
    assert mask.tolist() == [True] * len(one) + [False] * len(two)
    true = obj.evaluate([base + [c] for c in one], 256).numpy()
    # linear loss: the first-order prediction is exact up to a constant
    assert np.allclose(good[: len(one)] - good[0], -(true - true[0]), atol=1e-9)


# ----------------------------------------------------------------------------------------------
# The measurement on tiny random models with real tokenizers (SmolLM2 BPE -> MiniLM WordPiece)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_objective(tiny_gpt2, tiny_roberta):
    from fuse_repro.adapter import fit_adapter
    from fuse_repro.bridge import Bridge
    from fuse_repro.config import AdapterConfig, CorpusConfig
    from fuse_repro.objectives import build_objective

    cfg = AdapterConfig(words_per_bucket=256, heldout_words=16, corpus=CorpusConfig(max_words=20000))
    adapter = fit_adapter(tiny_gpt2, tiny_roberta, cfg, None)
    assert adapter.kind == "fuse"
    bridge = Bridge(tiny_gpt2, tiny_roberta, adapter)
    return build_objective("sentiment", tiny_roberta, bridge, 1.0, sentiment="positive")


@pytest.mark.slow
def test_measurement_scores_what_propose_ranks(tiny_gpt2, tiny_objective) -> None:
    from fuse_repro.config import SearchConfig
    from fuse_repro.data import Item
    from fuse_repro.fidelity import (
        candidate_tokens,
        measure_state,
        predictions,
        search_states,
        summarize,
        true_losses,
    )
    from fuse_repro.search import candidate_scores, evaluate_candidates, propose
    from fuse_repro.stages.fidelity import rows_to_csv

    search_cfg = SearchConfig(steps=1, top_k=8, beam_width=2, eval_chunk=16, logit_weight=0.1)
    cfg = FidelityConfig(after_steps=[0, 1], top_k=24, recall_k=4, random_maps=2, chance_draws=3)
    controls = control_bridges([tiny_objective], cfg, seed=0)
    assert set(controls) == {"random_maps", "mean_map", "fuse_overflow_zero"}
    item = Item(id="t0", target="a dog on the beach")
    records = []
    for step, state in search_states(item, tiny_gpt2, [tiny_objective], search_cfg, 1.0, 0, cfg.after_steps):
        assert state.steps_done == step
        scores = candidate_scores(state)
        cand = candidate_tokens(scores, cfg.top_k)
        preds = predictions(state, scores, cand, controls)
        # what the measurement calls `fuse`, plus the LM part, is the score propose ranks by
        total = preds["fuse"][0] + search_cfg.logit_weight * preds["lm_only"][0]
        assert np.allclose(total, scores.total[0, cand].double().numpy(), atol=1e-6)
        assert propose(state, scores)[0].tolist() == torch.sort(
            scores.total[0], descending=True, stable=True).indices[: search_cfg.top_k].tolist()
        # candidates: the best beam's LM top-K; losses: the search's own candidate evaluation
        assert cand.tolist() == torch.topk(scores.lm[0], cfg.top_k).indices.tolist()
        base = list(state.prefix_ids) + list(state.beams[0])
        direct = evaluate_candidates(state.searching, [base + [c] for c in cand.tolist()[:5]], 2)
        assert np.allclose(true_losses(state, cand)[:5], direct[tiny_objective.name].double().numpy(), atol=1e-6)
        record = measure_state(state, controls, cfg, np.random.default_rng(step))
        records.append(record)
        for metrics in record["metrics"].values():
            assert -1.0 <= metrics["spearman"] <= 1.0 and 0.0 <= metrics["recall_at_k"] <= 1.0
            assert metrics["regret"] >= 0.0
        assert len(record["per_seed"]["random_maps"]) == 2
    rows = summarize(records, cfg.recall_k)
    names = [r["condition"] for r in rows]
    assert names[:5] == ["fuse", "random_maps", "mean_map", "lm_only", "chance"]
    assert "fuse_overflow_zero" in names
    header = rows_to_csv(rows).splitlines()[0].split(",")
    for column in ("condition", "spearman", "spearman_se", "recall_at_4", "recall_at_4_se", "regret", "n_states"):
        assert column in header
    assert all(r["n_states"] == 2 for r in rows if r["subset"] == "all")


# ----------------------------------------------------------------------------------------------
# Config and the study summary
# ----------------------------------------------------------------------------------------------
def test_fidelity_config_rejects_bad_values_in_one_line() -> None:
    from fuse_repro.config import convert
    from fuse_repro.errors import ConfigError

    assert convert({}, FidelityConfig).top_k == 256
    for bad, key in (({"recall_k": 300}, "fidelity.recall_k"), ({"after_steps": []}, "fidelity.after_steps"),
                     ({"random_maps": 0}, "fidelity.random_maps"), ({"top_k": 1}, "fidelity.top_k")):
        with pytest.raises(ConfigError, match=key) as err:
            convert(bad, FidelityConfig)
        assert "\n" not in str(err.value)


def _job_summary(folder, L: int, N: int, fuse: float, rnd: float) -> None:
    from fuse_repro.records import write_json

    def row(name: str, rho: float, spread: float = float("nan")) -> dict:
        return {"condition": name, "subset": "all", "spearman": rho, "spearman_se": 0.02,
                "spearman_spread": spread, "recall_at_16": rho / 2, "recall_at_16_se": 0.01,
                "recall_at_16_spread": spread, "regret": 1.0, "regret_se": 0.1, "n_states": 4}

    context = {"max_tokens": L, "words_per_bucket": N, "overflow_policy": "random", "states": 4,
               "recall_k": 16, "fit_residual_heldout": 0.9 - N / 1e5, "fit_baseline_heldout": 0.99,
               "overflow": {"text_similarity": {"share_past_cap": 0.1 / L, "words": 50}}}
    write_json(folder / "fidelity_summary.json", {"context": context, "rows": [
        row("fuse", fuse), row("random_maps", rnd, 0.03), row("chance", 0.0),
        row("fuse_overflow_zero", fuse - 0.05)]})


def test_study_summary_reads_job_folders(tmp_path) -> None:
    from fuse_repro.fidelity_study import study_rows, write_study

    grid = [(1, 256, 0.1), (1, 1024, 0.15), (2, 256, 0.2), (2, 1024, 0.3)]
    for job, (L, N, rho) in enumerate(reversed(grid)):
        (tmp_path / str(job)).mkdir()
        _job_summary(tmp_path / str(job), L, N, rho, 0.01)
    rows = study_rows(tmp_path)
    assert [(r["L"], r["N"], r["fuse.spearman"]) for r in rows] == grid
    assert rows[0]["share_past_cap"] == pytest.approx(0.1)
    assert rows[0]["fuse_overflow_zero.spearman"] == pytest.approx(0.05)
    written = write_study(tmp_path)
    assert {p.name for p in written} == {"fidelity_study.csv", "fidelity_study.md", "fidelity_vs_N.png",
                                        "fidelity_vs_L.png", "fidelity_vs_residual.png"}
    csv_lines = (tmp_path / "fidelity_study.csv").read_text().splitlines()
    assert csv_lines[0].startswith("job,L,N,overflow_policy,states,recall_k,fit_residual_heldout")
    assert len(csv_lines) == 1 + len(grid)
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("fidelity_vs_N.png", "fidelity_vs_L.png", "fidelity_vs_residual.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no fidelity_summary.json"):
        write_study(empty)
