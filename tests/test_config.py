"""Compose the real configs in conf/ (every option of every group, every experiment file) and
check each against its schema; the stage table, the run hash and the device check.

Options are discovered by globbing conf/, so a new model, dataset or experiment file is covered
without touching this file.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from fuse_repro.app import STAGES, resolve_device, resolve_stage
from fuse_repro.config import (
    AdapterConfig,
    LoggerConfig,
    SearchConfig,
    run_config_hash,
    typed,
    validate_adapter,
    validate_search,
)
from fuse_repro.data import _KNOWN_KEYS, _SUBSET_KEYS, FORMATS, SUBSET_MODES
from fuse_repro.models import BACKENDS, KINDS
from fuse_repro.objectives import OBJECTIVES
from fuse_repro.scoring import ScoringOptions

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# Groups not composed on their own here: hydra/ is always in the root defaults, local/ is a
# per-machine file that is not part of the checkout.
SKIP_GROUPS = {"hydra", "local"}
OUTPUT_DIR_PLACEHOLDER = "/nonexistent/hydra-runtime-output-dir"


@functools.cache
def _compose(overrides: tuple[str, ...], hydra_node: bool) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF), job_name="test_config"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


def compose_cfg(overrides: list[str] | None = None, hydra_node: bool = False) -> DictConfig:
    """The composed config (a fresh copy: composing is the slow part of this file)."""
    return copy.deepcopy(_compose(tuple(overrides or ()), hydra_node))


def root_default_packages() -> dict[str, list[str]]:
    """Group -> the packages it is placed at in conf/config.yaml's defaults list
    (``model@source`` -> {"model": ["source", ...]}; a plain entry gets [""])."""
    out: dict[str, list[str]] = {}
    for entry in OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"))["defaults"]:
        if not isinstance(entry, dict):
            continue
        for key in entry:
            key = key.removeprefix("optional ").removeprefix("override ").strip()
            group, _, package = key.partition("@")
            out.setdefault(group, []).append(package)
    return out


def group_options() -> list[tuple[str, str]]:
    """(group, option) for every YAML file under conf/<group>/ (nested folders included)."""
    found = []
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir()):
        if group_dir.name in SKIP_GROUPS:
            continue
        for path in sorted(group_dir.rglob("*.yaml")):
            found.append((group_dir.name, path.relative_to(group_dir).with_suffix("").as_posix()))
    return found


def option_overrides() -> list[Any]:
    """One override list per option: ``group=option`` for groups of the root defaults list
    (``model@source=...`` and ``model@target=...`` for a packaged group), ``+group=option``
    for opt-in groups that are not in it (launcher)."""
    packages = root_default_packages()
    cases = []
    for group, option in group_options():
        if group in packages:
            for package in packages[group]:
                key = f"{group}@{package}" if package else group
                cases.append(pytest.param([f"{key}={option}"], id=f"{key}={option}"))
        else:
            cases.append(pytest.param([f"+{group}={option}"], id=f"+{group}={option}"))
    return cases


def check_resolves(cfg: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation but the hydra node and paths.output_dir (both need a Hydra
    runtime); returns the plain config."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    assert raw["paths"]["output_dir"] == "${hydra:runtime.output_dir}"
    raw["paths"]["output_dir"] = OUTPUT_DIR_PLACEHOLDER
    plain = OmegaConf.to_container(OmegaConf.create(raw), resolve=True, throw_on_missing=False)
    assert isinstance(plain, dict)
    return plain


def check_model(node: DictConfig, where: str) -> None:
    assert node.get("name"), f"{where}: model config without a name"
    assert node.get("backend") in BACKENDS, f"{where}: backend {node.get('backend')!r}"
    assert node.get("kind") in KINDS, f"{where}: kind {node.get('kind')!r}"


def check_schemas(cfg: DictConfig) -> None:
    """Everything a stage validates at start-up, without loading anything."""
    plain = check_resolves(cfg)
    assert plain["stage"] in STAGES
    assert isinstance(plain["seed"], int)
    validate_adapter(typed(cfg.adapter, AdapterConfig))
    validate_search(typed(cfg.search, SearchConfig))
    ScoringOptions.from_config(cfg.scoring)
    if cfg.logger.name == "wandb":
        logger = typed(cfg.logger, LoggerConfig)
        assert logger.mode in ("online", "offline", "disabled")
    else:
        assert cfg.logger.name == "none"
    # Any model composes at either package; only the stages check the source is a causal LM.
    check_model(cfg.source, "source")
    check_model(cfg.target, "target")
    assert float(cfg.objective.lm_weight) >= 0
    for name, term in (cfg.objective.get("terms") or {}).items():
        assert term.kind in OBJECTIVES, f"objective.terms.{name}.kind={term.kind!r}"
        assert float(term.weight) >= 0
        check_model(term.model, f"objective.terms.{name}.model")
    dataset = plain["dataset"]
    assert dataset["format"] in FORMATS
    assert set(dataset) <= _KNOWN_KEYS, sorted(set(dataset) - _KNOWN_KEYS)
    assert set(dataset["subset"]) <= _SUBSET_KEYS
    assert dataset["subset"]["mode"] in SUBSET_MODES
    assert set(plain["merge"]) == {"inputs", "output"}
    assert set(plain["table"]) <= {
        "roots",
        "out_dir",
        "datasets",
        "experiments",
        "methods",
        "formats",
    }


# ----------------------------------------------------------------------------------- composing


def test_root_config_defaults():
    cfg = compose_cfg()
    check_schemas(cfg)
    assert cfg.stage == "pipeline" and cfg.seed == 0 and cfg.device == "auto"
    assert cfg.source.name == "smollm2_135m" and cfg.target.name == "minilm_l6"
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"
    assert "hydra" not in cfg


def test_every_group_has_options():
    groups = {g for g, _ in group_options()}
    assert {"model", "objective", "search", "dataset", "logger", "debug", "launcher"} <= groups
    assert ("objective", "tiny_sentiment") in group_options()


@pytest.mark.parametrize("overrides", option_overrides())
def test_every_option_composes_and_validates(overrides):
    check_schemas(compose_cfg(overrides))


EXPERIMENTS = sorted(
    p.relative_to(CONF / "experiment").with_suffix("").as_posix()
    for p in (CONF / "experiment").rglob("*.yaml")
)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    cfg = compose_cfg([f"experiment={name}"])
    check_schemas(cfg)
    # An experiment labels its runs (tables and output folders are keyed by it).
    assert cfg.experiment_name != "default", f"experiment {name} does not set experiment_name"
    # ... and with the debug settings on top, as `python run.py experiment=X debug=default` does.
    check_schemas(compose_cfg([f"experiment={name}", "debug=default"]))


def test_hydra_node_and_callbacks():
    cfg = compose_cfg(hydra_node=True)
    raw = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert raw["job"]["chdir"] is False
    assert raw["run"]["dir"].startswith("${paths.log_dir}/")
    assert raw["sweep"]["dir"].startswith("${paths.log_dir}/multirun/")
    for name, callback in cfg.hydra.callbacks.items():
        assert get_class(callback._target_), name
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")


@pytest.mark.parametrize(
    ("name", "launcher"), [("local", "LocalLauncher"), ("slurm", "SlurmLauncher")]
)
def test_launcher_configs(name, launcher):
    cfg = compose_cfg([f"+launcher={name}"], hydra_node=True)
    node = cfg.hydra.launcher
    assert node._target_ == f"hydra_plugins.hydra_submitit_launcher.submitit_launcher.{launcher}"
    assert get_class(node._target_)
    assert node.timeout_min > 0 and node.nodes == 1 and node.tasks_per_node == 1
    if name == "slurm":
        assert node.gpus_per_node == 1 and node.cpus_per_task > 0 and node.mem_gb > 0
    # The launcher only touches hydra.*: the run config (and so its hash) is unchanged.
    assert run_config_hash(compose_cfg([f"+launcher={name}"])) == run_config_hash(compose_cfg())
    check_schemas(cfg)


def test_debug_settings_apply():
    cfg = compose_cfg(["debug=default", "logger=none"])
    assert cfg.search.steps == 2 and cfg.dataset.subset.mode == "first"
    check_schemas(cfg)


# --------------------------------------------------------------------------- stages and checks


def test_unknown_stage_lists_known_stages():
    with pytest.raises(ValueError) as err:
        resolve_stage("bogus")
    message = str(err.value)
    assert "unknown stage='bogus'" in message
    for stage in STAGES:
        assert stage in message
    assert resolve_stage("merge").__name__ == "fuse_repro.stages.merge"


def test_every_stage_module_has_run():
    for name in STAGES:
        assert callable(resolve_stage(name).run), name


@pytest.mark.parametrize(
    "override",
    [
        "search.top_k=7",
        "seed=1",
        "adapter.max_tokens=3",
        "objective=tiny_sentiment",
        "model@source=tiny_gpt2",
        "dataset.subset.mode=first",
    ],
)
def test_run_hash_changes_with_determining_keys(override):
    assert run_config_hash(compose_cfg([override])) != run_config_hash(compose_cfg())


@pytest.mark.parametrize(
    "override",
    [
        "paths.cache_dir=/elsewhere/cache",
        "paths.log_dir=/elsewhere/logs",
        "paths.data_dir=/elsewhere/data",
        "paths.root_dir=/elsewhere",
        "logger=none",
        "logger.project=other",
        "device=cpu",
        "device=cuda:1",
        "stage=caption",
    ],
)
def test_run_hash_ignores_paths_logger_device(override):
    # scoring.spice.cache_dir interpolates paths.cache_dir and scoring.sentiment.device
    # interpolates device: neither may leak into the hash.
    assert run_config_hash(compose_cfg([override])) == run_config_hash(compose_cfg())


def test_run_hash_is_stable_across_compositions():
    a, b = compose_cfg(["search.top_k=7"]), compose_cfg(["search.top_k=7"])
    assert run_config_hash(a) == run_config_hash(b)
    assert len(run_config_hash(a)) == 16


def test_misspelled_adapter_key_is_named():
    cfg = compose_cfg(["+adapter.words_per_bukket=64"])
    with pytest.raises(Exception, match="words_per_bukket"):
        typed(cfg.adapter, AdapterConfig)
    cfg = compose_cfg(["+adapter.corpus.max_wrds=10"])
    with pytest.raises(Exception, match="max_wrds"):
        typed(cfg.adapter, AdapterConfig)
    # Misspelled without `+`: Hydra itself refuses the override and names the key.
    with pytest.raises(Exception, match="words_per_bukket"):
        compose_cfg(["adapter.words_per_bukket=64"])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("adapter.overflow=wrap", "adapter.overflow='wrap'"),
        ("adapter.max_tokens=0", "adapter.max_tokens"),
        ("adapter.corpus.kind=books", "adapter.corpus.kind='books'"),
    ],
)
def test_bad_adapter_values_fail_validation(override, match):
    cfg = compose_cfg([override])
    with pytest.raises(ValueError, match=match):
        validate_adapter(typed(cfg.adapter, AdapterConfig))


def test_wrong_type_is_named():
    cfg = compose_cfg(["search.top_k=many"])
    with pytest.raises(Exception, match="top_k"):
        typed(cfg.search, SearchConfig)
    cfg = compose_cfg(["search.method=greedy"])
    with pytest.raises(ValueError, match="search.method='greedy'"):
        validate_search(typed(cfg.search, SearchConfig))


def test_misspelled_scoring_key_is_named():
    cfg = compose_cfg(["+scoring.sentiment.rul=argmax"])
    with pytest.raises(ValueError, match=r"scoring\.sentiment\.rul"):
        ScoringOptions.from_config(cfg.scoring)


def test_device_values():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match=r"device='gpu0' is not a torch device \(try cpu, cuda"):
        resolve_device("gpu0")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")
