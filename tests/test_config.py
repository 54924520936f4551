"""The config path (fuse_repro/config/, conf/): compose every option of every group and every
experiment and convert it to its schema; unknown keys fail naming the key and the group, at
compose time and at the conversion point; defaults live in one place; the run hash.

Options are discovered by globbing conf/, so a new model, dataset or experiment file is covered
without touching this file.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from fuse_repro.app import STAGES, resolve_stage
from fuse_repro.config import (
    MODEL_SCHEMAS,
    AdapterConfig,
    ConfigError,
    CorpusConfig,
    DatasetConfig,
    FuseConfig,
    LoggerConfig,
    MergeConfig,
    ModelConfig,
    ObjectiveConfig,
    PipelineConfig,
    ScoringConfig,
    SearchConfig,
    SentimentScoringConfig,
    SubsetConfig,
    SyntheticImagesConfig,
    TableConfig,
    TermConfig,
    compose_error_line,
    convert,
    git_commit,
    register_resolvers,
    run_config_hash,
    validate,
)
from fuse_repro.config.root import SEED_MAX
from fuse_repro.config.store import _schema_at
from tests.helpers import TEXT_ASSERTIONS

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# Groups not composed on their own here: hydra/ is always in the root defaults, local/ is a
# per-machine file that is not part of the checkout.
SKIP_GROUPS = {"hydra", "local"}
OUTPUT_DIR_PLACEHOLDER = "/nonexistent/hydra-runtime-output-dir"


@functools.cache
def _compose(overrides: tuple[str, ...], hydra_node: bool, conf: str) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=conf, job_name="test_config"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


def _run_hash(cfg: DictConfig) -> str:
    """The run hash the entry point records: of the validated root config."""
    return run_config_hash(validate(cfg, output_dir="/tmp/fuse-run"))


def compose_cfg(
    overrides: list[str] | None = None, hydra_node: bool = False, conf: Path = CONF
) -> DictConfig:
    """The composed config (a fresh copy: composing is the slow part of this file)."""
    return copy.deepcopy(_compose(tuple(overrides or ()), hydra_node, str(conf)))


def with_values(**values: Any) -> DictConfig:
    """The default config with ``values`` set (``"search.top_k": 7`` as ``**{...}``), as a
    command-line override would set them on the composed config (without composing again)."""
    cfg = compose_cfg()
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def with_extra_key(path: str) -> DictConfig:
    """The default config with ``<path>.bogus_key: 1`` added as ``+<path>.bogus_key=1`` adds it
    (past the struct flag)."""
    cfg = compose_cfg()
    with open_dict(cfg):
        OmegaConf.update(cfg, f"{path}.bogus_key", 1, force_add=True)
    return cfg


def to_schema(cfg: DictConfig) -> FuseConfig:
    """The whole config as its root dataclass (every group's __post_init__ runs), with the one
    value that needs a Hydra runtime (paths.output_dir) replaced."""
    cfg = copy.deepcopy(cfg)
    cfg.paths.output_dir = OUTPUT_DIR_PLACEHOLDER
    return convert(cfg, FuseConfig)


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


def model_nodes(cfg: DictConfig) -> dict[str, DictConfig]:
    nodes = {"source": cfg.source, "target": cfg.target}
    for name, term in (cfg.objective.get("terms") or {}).items():
        nodes[f"objective.terms.{name}.model"] = term.model
    return nodes


def check_typed(cfg: DictConfig) -> FuseConfig:
    """Every group is typed by its schema while composing, and converts to it."""
    expected = {
        "adapter": AdapterConfig, "objective": ObjectiveConfig, "search": SearchConfig,
        "dataset": DatasetConfig, "scoring": ScoringConfig, "table": TableConfig,
        "merge": MergeConfig, "logger": LoggerConfig, "pipeline": PipelineConfig,
    }
    for group, schema in expected.items():
        assert OmegaConf.get_type(cfg[group]) is schema, group
    for where, node in model_nodes(cfg).items():
        schema = OmegaConf.get_type(node)
        assert schema in MODEL_SCHEMAS.values(), f"{where}: typed {schema}, not a backend schema"
        assert node.backend in schema.BACKENDS, where
    typed = to_schema(cfg)
    assert isinstance(typed.search, SearchConfig) and isinstance(typed.source, ModelConfig)
    assert typed.stage in STAGES
    return typed


# ----------------------------------------------------------------------------------- composing


def test_root_config_defaults():
    cfg = compose_cfg()
    typed = check_typed(cfg)
    assert typed.stage == "pipeline" and typed.seed == 0 and typed.device == "auto"
    assert typed.source.name == "smollm2_135m" and typed.target.name == "minilm_l6"
    assert typed.logger.name == "wandb" and typed.logger.mode == "offline"
    assert typed.weights == "pretrained" and typed.optimized_metric is None
    assert "hydra" not in cfg


def test_every_group_has_options():
    groups = {g for g, _ in group_options()}
    assert {"model", "objective", "search", "dataset", "logger", "smoke", "launcher"} <= groups
    assert ("dataset", "synthetic_images") in group_options()


@pytest.mark.parametrize("overrides", option_overrides())
def test_every_option_composes_and_converts(overrides):
    check_typed(compose_cfg(overrides))


EXPERIMENTS = sorted(
    p.relative_to(CONF / "experiment").with_suffix("").as_posix()
    for p in (CONF / "experiment").rglob("*.yaml")
)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_converts(name):
    typed = check_typed(compose_cfg([f"experiment={name}"]))
    # An experiment labels its runs (tables and output folders are keyed by it).
    assert typed.experiment_name != "default", f"experiment {name} does not set experiment_name"
    # ... and composes with the smoke settings, random weights and the synthetic images on top.
    check_typed(compose_cfg([f"experiment={name}", "smoke=default", "weights=random",
                             "dataset=synthetic_images"]))


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
    assert _run_hash(compose_cfg([f"+launcher={name}"])) == _run_hash(compose_cfg())


def test_smoke_settings_apply():
    cfg = compose_cfg(["smoke=default", "logger=none"])
    typed = check_typed(cfg)
    assert typed.search.steps == 2 and typed.dataset.subset.mode == "first"


def test_every_stage_module_has_run():
    for name in STAGES:
        assert callable(resolve_stage(name).run), name


# ------------------------------------------------------------------ image datasets, objectives


@pytest.mark.parametrize("dataset", ["image_folder", "synthetic_images"])
def test_image_datasets_select_an_image_objective(dataset):
    kinds = lambda cfg: sorted(t.kind for t in cfg.objective.terms.values())
    assert kinds(compose_cfg([f"dataset={dataset}"])) == ["clip"]
    # An explicit choice wins, wherever it stands on the command line ...
    assert kinds(compose_cfg([f"dataset={dataset}", "objective=clip_sentiment"])) == ["clip", "sentiment"]
    assert kinds(compose_cfg(["objective=clip_sentiment", f"dataset={dataset}"])) == ["clip", "sentiment"]
    # ... and so does an experiment's (the caption stage's check then says what it needs).
    assert kinds(compose_cfg(["experiment=paper_senticap_positive_fuse", f"dataset={dataset}"])) \
        == ["clip", "sentiment"]
    assert kinds(compose_cfg(["experiment=coco_text_targets", f"dataset={dataset}"])) \
        == ["text_similarity"]


def test_synthetic_images_subset_n_takes_the_first_images():
    typed = check_typed(compose_cfg(["dataset=synthetic_images", "dataset.subset.n=2", "seed=3"]))
    assert typed.dataset.subset.mode == "first" and typed.dataset.subset.n == 2
    assert typed.dataset.synthetic.seed == 3  # wired to the root seed
    assert typed.dataset.name == "synthetic_images"


# ------------------------------------------------------------------------- unknown keys fail


# (path of a node, its group, its schema's name): one per schema of the root config.
NODES = [
    ("search", "search", "SearchConfig"),
    ("adapter", "adapter", "AdapterConfig"),
    ("adapter.corpus", "adapter", "CorpusConfig"),
    ("dataset", "dataset", "DatasetConfig"),
    ("dataset.subset", "dataset", "SubsetConfig"),
    ("dataset.synthetic", "dataset", "SyntheticImagesConfig"),
    ("objective", "objective", "ObjectiveConfig"),
    ("objective.terms.text_similarity", "objective", "TermConfig"),
    ("objective.terms.text_similarity.model", "model", "HFModelConfig"),
    ("source", "model", "GGUFModelConfig"),
    ("target", "model", "HFModelConfig"),
    ("scoring", "scoring", "ScoringConfig"),
    ("scoring.sentiment", "scoring", "SentimentScoringConfig"),
    ("scoring.spice", "scoring", "SpiceConfig"),
    ("table", "table", "TableConfig"),
    ("merge", "merge", "MergeConfig"),
    ("logger", "logger", "LoggerConfig"),
    ("pipeline", "pipeline", "PipelineConfig"),
    ("paths", "paths", "PathsConfig"),
]


@pytest.mark.parametrize(("path", "group", "schema"), NODES, ids=[n[0] for n in NODES])
def test_unknown_key_fails_at_compose_naming_key_and_group(path, group, schema):
    with pytest.raises(Exception) as err:  # Hydra's ConfigCompositionException
        compose_cfg([f"{path}.bogus_key=1"])
    line = compose_error_line(err.value)
    assert "\n" not in line
    if TEXT_ASSERTIONS:
        assert f"unknown key {path}.bogus_key" in line and f"config group {group}" in line
        assert schema in line


@pytest.mark.parametrize(("path", "group", "schema"), NODES, ids=[n[0] for n in NODES])
def test_unknown_key_added_with_plus_fails_at_conversion(path, group, schema):
    # `+key=value` passes Hydra's struct check; the conversion point catches it.
    with pytest.raises(ConfigError) as err:
        to_schema(with_extra_key(path))
    message = str(err.value)
    assert "\n" not in message
    if TEXT_ASSERTIONS:
        assert f"unknown key {path}.bogus_key in config group {group} (schema {schema})" in message
        assert "known keys:" in message


def _conf_with(tmp_path: Path, relative: str, line: str) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    with (conf / relative).open("a") as fh:
        fh.write(line)
    return conf


def test_unknown_key_in_a_yaml_file_fails_at_compose(tmp_path):
    conf = _conf_with(tmp_path / "a", "search/paper.yaml", "beam_widht: 4\n")
    with pytest.raises(Exception) as err:
        compose_cfg(["search=paper"], conf=conf)
    line = compose_error_line(err.value)
    if TEXT_ASSERTIONS:
        assert ("unknown key search.beam_widht (in conf/search/paper.yaml) in config group search"
                in line)
    conf = _conf_with(tmp_path / "b", "model/minilm_l6.yaml", "pooling: mean\n")
    with pytest.raises(Exception) as err:
        compose_cfg([], conf=conf)
    line = compose_error_line(err.value)
    if TEXT_ASSERTIONS:
        assert "pooling" in line and "conf/model/minilm_l6.yaml" in line
        assert "config group model (schema HFModelConfig" in line


def test_plain_mappings_convert_with_a_schema():
    assert convert({"steps": 2}, SearchConfig) == SearchConfig(steps=2)
    with pytest.raises(ConfigError, match=r"unknown key max_wrds in config group .*CorpusConfig"):
        convert({"max_wrds": 3}, CorpusConfig)
    with pytest.raises(ConfigError, match=r"unknown key corpus.max_wrds .*schema CorpusConfig"):
        convert({"corpus": {"max_wrds": 3}}, AdapterConfig)
    # A plain model mapping gets its backend's schema.
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny_gpt2.yaml"))
    raw.pop("defaults")
    raw["weights"] = "pretrained"
    model = convert(raw, ModelConfig)
    assert type(model).__name__ == "TinyGPT2Config" and model.n_layer == 2
    with pytest.raises(ConfigError, match="backend='nope'"):
        convert({"name": "x", "kind": "causal_lm", "backend": "nope", "dtype": "float32"}, ModelConfig)


def test_missing_value_names_the_key():
    with pytest.raises(ConfigError, match=r"dataset\.name is required"):
        to_schema(compose_cfg(["dataset.name=???"]))


# -------------------------------------------------------------------------- value validation


def test_plus_override_reaches_the_conversion_point():
    with pytest.raises(ConfigError, match=r"unknown key search\.bogus_key in config group search"):
        to_schema(compose_cfg(["+search.bogus_key=1"]))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("search.beam_width=0", r"search\.beam_width must be >= 1, got 0"),
        ("search.top_k=0", r"search\.top_k must be >= 1"),
        ("adapter.overflow=wrap", r"adapter\.overflow='wrap'"),
        ("adapter.max_tokens=0", r"adapter\.max_tokens \(L\) must be >= 1"),
        ("adapter.corpus.kind=books", r"adapter\.corpus\.kind='books'"),
        ("adapter.rcond=1.5", r"adapter\.rcond must be null or in \[0, 1\)"),
        ("objective.lm_weight=-1", r"objective\.lm_weight=-1\.0 must be a finite number >= 0"),
        ("objective.terms.text_similarity.weight=nan", r"terms\.text_similarity\.weight=nan"),
        ("dataset.subset.mode=sample", r"subset\.mode=sample needs subset\.n >= 1"),
        ("dataset.subset.mode=every_other", r"dataset\.subset\.mode='every_other'"),
        ("dataset.format=tsv", r"dataset\.format='tsv'"),
        ("dataset.synthetic.num_images=3", r"dataset\.synthetic is read by format synthetic_images"),
        ("scoring.metrics=[bleu,WER]", r"unknown metric 'WER'"),
        ("scoring.sentiment.rule=vote", r"scoring\.sentiment\.rule='vote'"),
        ("logger.mode=loud", r"logger\.mode='loud'"),
        ("table.formats=[md,pdf]", r"table\.formats entry='pdf'"),
        ("pipeline.methods=[]", r"pipeline\.methods is empty"),
        ("weights=zeros", r"weights='zeros'"),
        ("resume=always", r"resume='always'"),
        ("threads=0", r"threads must be >= 1"),
        ("source.dtype=float8", r"dtype='float8'"),
    ],
)
def test_bad_values_fail_at_conversion_with_one_line(override, match):
    key, _, text = override.partition("=")
    value: Any = text  # the typed node converts it, as for a command-line override
    if text.startswith("["):
        value = [v for v in text.strip("[]").split(",") if v]
    elif text == "nan":
        value = float("nan")
    with pytest.raises(ConfigError, match=match) as err:
        to_schema(with_values(**{key: value}))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("search.method=greedy", r"search\.method='greedy' is not one of"),
        ("search.slot_init=zero", r"search\.slot_init='zero'"),
        ("pipeline.methods=[fuse,greedy]", r"pipeline\.methods entry='greedy' is not one of"),
    ],
)
def test_search_registry_names_fail_in_the_stage_check(override, match):
    """Names of the search registries (torch code) are checked by the search library, in the
    stage's check, before any model loads; the schemas stay torch-free."""
    from fuse_repro.stages import pipeline

    key, _, text = override.partition("=")
    value: Any = [v for v in text.strip("[]").split(",")] if text.startswith("[") else text
    root = to_schema(with_values(**{key: value}))
    with pytest.raises(ConfigError, match=match) as err:
        pipeline.check(root)
    assert "\n" not in str(err.value)


@pytest.mark.pins_message
def test_wrong_type_fails_at_compose():
    with pytest.raises(Exception) as err:
        compose_cfg(["search.top_k=many"])
    assert compose_error_line(err.value) == (
        "bad override search.top_k=many: Value 'many' of type 'str' could not be converted to "
        "Integer")


@pytest.mark.pins_message
def test_unknown_option_lists_the_available_ones():
    with pytest.raises(Exception) as err:
        compose_cfg(["search=greedy"])
    assert compose_error_line(err.value) == (
        "In 'config': Could not find 'search/greedy'; available: fuse, paper; use one of them, "
        "e.g. search=fuse")
    with pytest.raises(Exception) as err:
        compose_cfg(["model@source=gpt3"])
    line = compose_error_line(err.value)
    assert "Could not find 'model/gpt3'" in line and "smollm2_135m" in line
    assert "schema" not in line  # the model schemas live in their own group, not among options


@pytest.mark.pins_message
def test_override_inside_a_null_node_gets_a_line_too():
    # Hydra raises a bare AssertionError here; the line says what to do instead (the command
    # line names the node; without it the line says where such a node is set).
    with pytest.raises(AssertionError) as err:
        compose_cfg(["target.tokenizer.source=hf"])
    line = compose_error_line(err.value, ["stage=fit", "target.tokenizer.source=hf"])
    assert "target.tokenizer is null" in line and "model@target=<new>" in line
    assert "in a config file" in compose_error_line(err.value)


def test_all_zero_weights_and_stray_sentiment_key():
    with pytest.raises(ConfigError, match="all objective weights are zero"):
        to_schema(compose_cfg(["objective.lm_weight=0", "objective.terms.text_similarity.weight=0"]))
    with pytest.raises(ConfigError, match="only kind=sentiment reads it"):
        to_schema(compose_cfg(["objective.terms.text_similarity.sentiment=positive"]))


def test_python_callers_get_the_same_validation():
    with pytest.raises(ConfigError, match="search.beam_width"):
        SearchConfig(beam_width=0)
    from fuse_repro.captioner import check_search

    with pytest.raises(ConfigError, match="search.method"):  # the search library's own check
        check_search(dataclasses.replace(SearchConfig(), method="greedy"))
    with pytest.raises(ConfigError, match="subset.mode=shard needs 0 <= subset.index"):
        SubsetConfig(mode="shard", index=2, count=2)


# -------------------------------------------------------------------- defaults in one place


def _schema_default(schema: type, key: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(schema)}[key]
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return OmegaConf.to_container(OmegaConf.structured(field.default_factory()))  # type: ignore[misc]
    return field.default


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        out = []
        for key, value in node.items():
            out += _leaves(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, node)]


def _restated(path: Path, base: str, schema: type | None) -> list[str]:
    """Keys a yaml option sets to the value its schema already defaults to."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(raw, dict)
    raw.pop("defaults", None)
    found = []
    for key, value in _leaves(raw):
        full = f"{base}.{key}" if base else key
        parent, _, leaf = full.rpartition(".")
        owner = schema if schema is not None and parent == base else _schema_at(parent)
        if owner is None or leaf not in {f.name for f in dataclasses.fields(owner)}:
            continue
        default = _schema_default(owner, leaf)
        if isinstance(value, str) and "${" in value:
            continue  # wiring to another key, not a default
        if default is not MISSING and default == value:
            found.append(f"{full}: {value!r}")
    return found


def _model_schema_of(path: Path) -> type:
    for entry in OmegaConf.load(path).get("defaults", []):
        if isinstance(entry, str) and entry.startswith("/schema/model/"):
            return MODEL_SCHEMAS[entry.removeprefix("/schema/model/").split("@")[0]]
    raise AssertionError(f"{path} names no model schema in its defaults list")


@pytest.mark.parametrize(("group", "option"), [
    go for go in group_options() if go[0] not in ("experiment", "smoke", "launcher")
], ids="/".join)
def test_no_option_restates_a_schema_default(group, option):
    path = CONF / group / f"{option}.yaml"
    is_global = OmegaConf.load(path) is not None and "# @package _global_" in path.read_text()
    if group == "model":
        restated = _restated(path, "", _model_schema_of(path))
    elif is_global:
        restated = _restated(path, "", FuseConfig)
    else:
        restated = _restated(path, group, None)
    assert not restated, f"conf/{group}/{option}.yaml restates schema defaults: {restated}"


def test_root_config_sets_only_wiring():
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"), resolve=False)
    raw.pop("defaults")
    assert all("${" in str(v) for _, v in _leaves(raw)), raw


@pytest.mark.parametrize("schema", [SearchConfig, MergeConfig, PipelineConfig])
def test_python_defaults_are_the_default_run(schema):
    """``SearchConfig()`` in Python is what ``python run.py`` uses."""
    group = {SearchConfig: "search", MergeConfig: "merge", PipelineConfig: "pipeline"}[schema]
    assert getattr(to_schema(compose_cfg()), group) == schema()


def test_adapter_defaults_are_the_default_run():
    typed = to_schema(compose_cfg(["seed=0"]))
    assert typed.adapter == AdapterConfig()
    assert to_schema(compose_cfg(["seed=5"])).adapter == AdapterConfig(seed=5)


def test_search_paper_option_holds_only_the_papers_values():
    paper = to_schema(compose_cfg(["search=paper"])).search
    changed = {f.name for f in dataclasses.fields(SearchConfig)
               if getattr(paper, f.name) != getattr(SearchConfig(), f.name)}
    assert {"steps", "top_k", "beam_width", "logit_weight"} <= changed
    assert (paper.top_k, paper.beam_width) == (512, 5)


def test_optimized_metric_key():
    assert compose_cfg().optimized_metric is None
    assert to_schema(compose_cfg(["optimized_metric=mean_total_loss"])).optimized_metric == \
        "mean_total_loss"


def test_schema_defaults_are_finite_and_valid():
    # Building every schema that has no required field runs its own validation.
    for schema in (SearchConfig, AdapterConfig, CorpusConfig, SubsetConfig, ScoringConfig,
                   MergeConfig, PipelineConfig):
        instance = schema()
        for f in dataclasses.fields(instance):
            value = getattr(instance, f.name)
            assert not (isinstance(value, float) and not math.isfinite(value)), (schema, f.name)
    assert TermConfig.__dataclass_fields__["weight"].default is MISSING


# -------------------------------------------------------------------------------- run hash


@pytest.mark.parametrize(
    "override",
    [
        "search.top_k=7",
        "seed=1",
        "adapter.max_tokens=3",
        "objective=tiny_sentiment",
        "model@source=tiny_gpt2",
        "dataset.split=val",
    ],
)
def test_run_hash_changes_with_determining_keys(override):
    key, _, value = override.partition("=")
    cfg = compose_cfg([override]) if "@" in key or key == "objective" else with_values(**{key: value})
    assert _run_hash(cfg) != _run_hash(compose_cfg())


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
        "threads=2",
        "resume=force",
        "optimized_metric=CIDEr",
    ],
)
def test_run_hash_ignores_paths_logger_device(override):
    # scoring.spice.cache_dir interpolates paths.cache_dir and scoring.sentiment.device
    # interpolates device: neither may leak into the hash.
    key, _, value = override.partition("=")
    cfg = compose_cfg([override]) if key == "logger" else with_values(**{key: value})
    assert _run_hash(cfg) == _run_hash(compose_cfg())


def test_run_hash_is_stable_across_compositions():
    a, b = compose_cfg(["search.top_k=7"]), compose_cfg(["search.top_k=7"])
    assert _run_hash(a) == _run_hash(b)
    assert len(_run_hash(a)) == 16


# --------------------------------------------------------------------------------------------
# survivors of bin/mutation's config target (issue 18)

# Every lower bound a schema checks, with its smallest allowed value: (schema, field, low).
LOWER_BOUNDS = [
    (CorpusConfig, "max_words", 1),
    (AdapterConfig, "max_tokens", 1),
    (AdapterConfig, "min_bucket_words", 0),
    (AdapterConfig, "words_per_bucket", 1),
    (AdapterConfig, "heldout_words", 0),
    *[(SearchConfig, key, 1) for key in
      ("steps", "top_k", "beam_width", "eval_chunk", "pool_factor", "items_per_step")],
    (SearchConfig, "min_steps", 0),
    (SentimentScoringConfig, "batch_size", 1),
    (SentimentScoringConfig, "max_length", 1),
    (SyntheticImagesConfig, "num_images", 1),
    (SyntheticImagesConfig, "size", 8),
    (SyntheticImagesConfig, "shapes", 1),
]


@pytest.mark.parametrize(("schema", "key", "low"), LOWER_BOUNDS,
                         ids=[f"{s.__name__}.{k}" for s, k, _ in LOWER_BOUNDS])
def test_each_lower_bound_is_inclusive(schema, key, low):
    """The smallest allowed value converts (from a plain mapping, as a saved config does); one
    less is a ConfigError."""
    assert getattr(convert({key: low}, schema), key) == low
    with pytest.raises(ConfigError):
        convert({key: low - 1}, schema)


@pytest.mark.parametrize(("key", "low", "high"), [("threads", 1, None), ("seed", 0, SEED_MAX)])
def test_root_bounds_are_inclusive(key, low, high):
    assert getattr(to_schema(with_values(**{key: low})), key) == low
    with pytest.raises(ConfigError):
        to_schema(with_values(**{key: low - 1}))
    if high is not None:
        assert getattr(to_schema(with_values(**{key: high})), key) == high
        with pytest.raises(ConfigError):
            to_schema(with_values(**{key: high + 1}))


def test_fractional_and_zero_objective_weights_are_allowed():
    typed = to_schema(with_values(**{"objective.lm_weight": 0.25,
                                     "objective.terms.text_similarity.weight": 0.0}))
    assert typed.objective.lm_weight == 0.25
    assert typed.objective.terms["text_similarity"].weight == 0.0
    with pytest.raises(ConfigError):
        to_schema(with_values(**{"objective.lm_weight": -0.25}))


@pytest.mark.parametrize("count", [None, 0])
def test_shard_without_a_positive_count_is_a_config_error(count):
    # index 0 is in range for any count >= 1, so only the count check can refuse it
    with pytest.raises(ConfigError):
        SubsetConfig(mode="shard", index=0, count=count)
    assert SubsetConfig(mode="shard", index=0, count=1).count == 1


def test_a_wrong_type_in_a_plain_mapping_is_one_config_error_line():
    # OmegaConf's own validation error, turned into one line naming the key
    with pytest.raises(ConfigError) as err:
        convert({"steps": "many"}, SearchConfig)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        convert({"subset": {"n": "two"}}, DatasetConfig)
    assert "\n" not in str(err.value)


def test_a_saved_config_validates_to_the_same_typed_root(tmp_path):
    """validate() takes a config read back from config_resolved.yaml (a plain node, no schema
    attached) as well as the composed one, and gives the same FuseConfig."""
    cfg = compose_cfg(["search.top_k=7"])
    saved = tmp_path / "config_resolved.yaml"
    saved.write_text(OmegaConf.to_yaml(cfg, resolve=False), encoding="utf-8")
    plain = OmegaConf.load(saved)
    assert OmegaConf.get_type(plain) is dict
    typed = validate(plain, output_dir="/tmp/fuse-run")
    assert isinstance(typed, FuseConfig)
    assert typed == validate(cfg, output_dir="/tmp/fuse-run")


def test_an_empty_path_root_masks_nothing():
    """A paths entry set to "" is not a root: it must not claim every absolute path (nor the
    empty string) for itself in the recorded, masked config."""
    from fuse_repro.config.hashing import masked_groups

    values = {"paths.data_dir": "", "dataset.image_dir": "/elsewhere/images"}
    typed = validate(with_values(**values), output_dir="/tmp/fuse-run")
    masked = masked_groups(typed, ("dataset",))
    assert masked["dataset"]["image_dir"] == "/elsewhere/images"
    values = {"paths.data_dir": "/data", "dataset.image_dir": "/data/images"}
    typed = validate(with_values(**values), output_dir="/tmp/fuse-run")
    assert masked_groups(typed, ("dataset",))["dataset"]["image_dir"] == "<paths.data_dir>/images"


def test_git_commit_is_the_checkouts_head(tmp_path, monkeypatch):
    import subprocess

    from fuse_repro.config import hashing

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    (tmp_path / "f").write_text("x")
    git("add", "f")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD").strip()
    monkeypatch.setattr(hashing, "REPO_ROOT", tmp_path)
    assert git_commit() == head
    monkeypatch.setattr(hashing, "REPO_ROOT", tmp_path / "not-a-checkout")
    (tmp_path / "not-a-checkout").mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert git_commit() == "unknown"


def test_register_resolvers_registers_working_resolvers():
    from fuse_repro.config.hashing import _fuse_root

    OmegaConf.clear_resolver("fuse_root")
    try:
        register_resolvers()
        assert OmegaConf.create({"root": "${fuse_root:}"}).root == _fuse_root()
    finally:
        if not OmegaConf.has_resolver("fuse_root"):
            OmegaConf.register_new_resolver("fuse_root", _fuse_root)
