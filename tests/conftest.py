"""Shared, session-scoped fixtures for the real offline models (loaded once per test session).

``model_cache_dir`` lives under pytest's tmp_path_factory, so the first SmolLM2 load of a session
dequantizes its GGUF (~30 s). Set ``FUSE_TEST_MODEL_CACHE`` to a folder to keep the converted
weights between sessions (the cache is keyed by the GGUF's identity, so it cannot go stale).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from fuse_repro.adapter import fit_adapter
from fuse_repro.models import load_model, model_config
from fuse_repro.testing.toy import make_toy_pair, toy_adapter_config
from fuse_repro.text_model import TextModel

MODEL_CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"


def model_cfg(name: str, weights: str = "pretrained", seed: int = 0) -> DictConfig:
    """The shipped ``conf/model/<name>.yaml`` as a config node, its root wiring resolved."""
    return model_config(name, weights=weights, seed=seed)


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    override = os.environ.get("FUSE_TEST_MODEL_CACHE")
    if override:
        path = Path(override)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture(scope="session")
def smollm2(model_cache_dir: Path) -> TextModel:
    return load_model(model_cfg("smollm2_135m"), cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def minilm(model_cache_dir: Path) -> TextModel:
    return load_model(model_cfg("minilm_l6"), cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def tiny_gpt2(model_cache_dir: Path) -> TextModel:
    return load_model(model_cfg("tiny_gpt2"), cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def tiny_roberta(model_cache_dir: Path) -> TextModel:
    return load_model(model_cfg("tiny_roberta"), cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def tiny_clip(model_cache_dir: Path) -> TextModel:
    return load_model(model_cfg("tiny_clip"), cache_dir=model_cache_dir)


# The real SmolLM2 -> MiniLM FUSE pair, fitted once per session with a small N (4096 words per
# bucket instead of the paper's 16384) on the offline wordfreq corpus. The reduced pipeline test
# runs `run.py` with the same adapter settings, so it reuses this cache entry.


@pytest.fixture(scope="session")
def smol_minilm_adapter(smollm2: TextModel, minilm: TextModel, model_cache_dir: Path):
    from fuse_repro.adapter import fit_adapter
    from fuse_repro.config import AdapterConfig

    return fit_adapter(smollm2, minilm, AdapterConfig(words_per_bucket=4096, heldout_words=256), model_cache_dir)


# The toy pair with planted t-linear maps (fuse_repro.testing.toy) and its fitted adapter,
# shared by the adapter and bridge tests.
@pytest.fixture(scope="module")
def toy():
    return make_toy_pair()


@pytest.fixture(scope="module")
def toy_adapter(toy, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toyfit")
    return fit_adapter(toy.source, toy.target, toy_adapter_config(tmp, toy.words), cache_root=tmp / "cache")


# --------------------------------------------------------------------------------------------
# Mutation testing's logic mode (bin/mutation sets FUSE_MUTATION_LOGIC=1): a mutant counts as
# killed only when a test fails on something other than message text. ``pytest.raises`` then
# checks the exception type but not ``match``, ``tests.test_errors.assert_one_line`` checks the
# exit code and the one-line shape but not its needles (``TEXT_ASSERTIONS``), and tests marked
# ``pins_message`` (their point is the wording) are skipped.
MUTATION_LOGIC = os.environ.get("FUSE_MUTATION_LOGIC") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pins_message: the test's assertions are about message "
                            "text (skipped in mutation testing's logic mode)")
    if MUTATION_LOGIC:
        _raises = pytest.raises

        def raises_any_message(*args, **kwargs):
            kwargs.pop("match", None)
            return _raises(*args, **kwargs)

        pytest.raises = raises_any_message


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MUTATION_LOGIC:
        skip = pytest.mark.skip(reason="pins message text (mutation logic mode)")
        for item in items:
            if item.get_closest_marker("pins_message"):
                item.add_marker(skip)
