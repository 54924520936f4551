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
        (["search=nope"], ["search/nope", "fuse"]),
        (["search.beam_widht=3"], ["beam_widht", "beam_width"]),
        (["stage=bogus"], ["bogus", "pipeline"]),
        (["resume=maybe"], ["resume", "maybe"]),
        (["threads=0"], ["threads"]),
        (["stage=score", "scoring.captions={root}/none.json"], ["none.json"]),
        (["stage=fit", "target.tokenizer.source=hf"], ["null", "whole node"]),
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
    ],
    ids=["beam_width_0", "max_tokens_0", "negative_weight", "missing_image_folder",
         "malformed_targets", "unknown_backend", "image_folder_needs_image_objective",
         "unknown_group_option", "misspelled_key", "unknown_stage", "bad_resume", "threads_0",
         "missing_results_file", "key_inside_null_node", "binary_annotations",
         "latin1_annotations", "folder_annotations", "truncated_annotations", "binary_corpus",
         "folder_corpus",
         "device_mps", "negative_seed",
         "unquoted_non_ascii_path", "unquoted_path_with_space", "pipeline_methods_entry",
         "results_file_is_a_folder", "encoder_as_source"],
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
