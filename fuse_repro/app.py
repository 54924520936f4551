"""What ``run.py`` does around Hydra: pick the stage, check the config, record the run, call it,
and turn user errors into one line.

The composed config is validated once, here (``config.validate``), and the typed root
(``FuseConfig``) is what a stage gets. Stages are plain modules with ``run(cfg, out_dir) -> dict``
(STYLE.md: audiocraft's stage dict), imported lazily so ``stage=table`` does not pay for torch
model imports it never uses. A stage may also define ``check(cfg)``, config-only validation that
this module calls once, before anything is printed and before any model loads, and
``OPTIMIZED_METRIC``, the key of its result a sweeper gets (``optimized_metric=<key>`` picks
another).

Errors: a ``FuseError`` (anything the user can fix) prints ``error: <message>`` as one line,
exits 2 and removes the run folder if the run left nothing in it but its configs. Full
tracebacks with ``debug=true`` or ``HYDRA_FULL_ERROR=1``. Ctrl-C prints the command that
resumes the run. In a multirun a failed job is recorded in its ``run_info.json`` and the sweep
goes on; at the end the process exits non-zero naming the failed jobs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fuse_repro import runtime
from fuse_repro.config import (
    FuseConfig,
    compose_error_line,
    git_commit,
    run_config_hash,
    validate,
)
from fuse_repro.errors import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    ConfigError,
    FuseError,
    one_line,
    use_one_of,
)
from fuse_repro.records import check_writable, write_run_info, write_text
from fuse_repro.tracking import run_group
from fuse_repro.weights_label import weights_fields

log = logging.getLogger(__name__)

STAGES: dict[str, str] = {
    "pipeline": "fuse_repro.stages.pipeline",
    "fit": "fuse_repro.stages.fit",
    "caption": "fuse_repro.stages.caption",
    "score": "fuse_repro.stages.score",
    "table": "fuse_repro.stages.table",
    "merge": "fuse_repro.stages.merge",
    "fidelity": "fuse_repro.stages.fidelity",
}

# What a run folder holds before its stage wrote anything: a failed run with only these (in it or
# in its method folders) is removed.
BOOKKEEPING = {".hydra", "config_resolved.yaml", "run_info.json", "run.log", "wandb",
               "captions_config.json"}


def resolve_stage(name: Any) -> Any:
    """The stage module for ``name``; a clear error listing the known stages otherwise."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage={name!r}; known stages: {', '.join(sorted(STAGES))}; "
                          f"{use_one_of('stage', sorted(STAGES), name)}")
    return importlib.import_module(STAGES[name])


def resolved_config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (hydra node left out): ``config_resolved.yaml``."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return OmegaConf.to_yaml(OmegaConf.create(plain))


# Stages whose models are worth naming in the start lines.
_MODEL_STAGES = ("pipeline", "caption", "fidelity", "fit")


def start_lines(root: FuseConfig, out_dir: Path) -> list[str]:
    """What a run prints before it works: stage, experiment, models, run folder, where the
    resolved config went (the whole tree with ``print_config=true``)."""
    lines = [f"fuse-repro: stage={root.stage} experiment={root.experiment_name}"]
    if root.stage in _MODEL_STAGES:
        if root.stage == "fit":
            models = f"source {root.source.name} -> target {root.target.name}"
        else:
            terms = ", ".join(f"{name} {getattr(term.model, 'name', term.kind)}"
                              for name, term in root.objective.terms.items())
            models = f"source {root.source.name}; objective {terms or 'LM only'}"
        lines.append(f"  models:     {models}" + (" (random weights)" if root.weights == "random"
                                                      else ""))
    lines.append(f"  run folder: {out_dir}")
    lines.append(f"  config:     {out_dir / 'config_resolved.yaml'} (print_config=true prints it)")
    return lines


def print_start(root: FuseConfig, cfg: DictConfig, out_dir: Path, tree: str) -> None:
    """The start lines, or with ``print_config=true`` the whole resolved config too."""
    if root.print_config:
        print("=" * 30 + " resolved config " + "=" * 30)
        print(tree, end="")
        print("=" * 77)
    print("\n".join(start_lines(root, out_dir)), flush=True)


def output_dir_of(cfg: DictConfig) -> Path:
    """Hydra's runtime output dir (never os.getcwd())."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def check_config(cfg: DictConfig, out_dir: Path | None = None) -> tuple[FuseConfig, Any]:
    """The one validation, before anything is printed, written or loaded: the composed config
    as its typed root (``config.validate``: every group's schema, unknown keys, types, values),
    the device, then the stage's own ``check`` (datasets, objectives, files). Returns the typed
    root and the stage module."""
    root = validate(cfg, output_dir=None if out_dir is None else str(out_dir))
    module = resolve_stage(root.stage)
    runtime.check_device(root.device)
    check = getattr(module, "check", None)
    if check is not None:
        check(root)
    return root, module


def optimized_value(cfg: FuseConfig, module: Any, result: Any) -> float | None:
    """The number a sweeper optimizes: ``result[optimized_metric or module.OPTIMIZED_METRIC]``."""
    key = cfg.optimized_metric or getattr(module, "OPTIMIZED_METRIC", None)
    if key is None or not isinstance(result, dict):
        return None
    value = result.get(key)
    if value is None and isinstance(result.get("metrics"), dict):
        value = result["metrics"].get(key)
    if value is None:
        if cfg.optimized_metric:
            numeric = sorted(k for k, v in result.items() if isinstance(v, (int, float)))
            raise ConfigError(f"optimized_metric={key!r} is not a result of stage={cfg.stage}; "
                              f"it returns {numeric}")
        return None
    return float(value)


def check_run(cfg: DictConfig, out_dir: Path | None = None) -> tuple[FuseConfig, Any, Path]:
    """Everything that may refuse the run, before it writes anything: ``check_config``, the
    run folder's writability, and the stage's ``check_folder(cfg, out_dir)`` (a resume into a
    folder holding captions made with other settings). A ``FuseError`` raised here is marked
    ``_fuse_refused``: ``run_task`` then puts back what Hydra wrote into an existing folder."""
    try:
        root, module = check_config(cfg, out_dir)
        out_dir = Path(out_dir) if out_dir is not None else output_dir_of(cfg)
        check_writable(out_dir)
        check_folder = getattr(module, "check_folder", None)
        if check_folder is not None:
            check_folder(root, out_dir)
    except FuseError as err:
        err._fuse_refused = True  # type: ignore[attr-defined]
        raise
    return root, module, out_dir


def run_stage(cfg: DictConfig, out_dir: Path | None = None) -> float | None:
    """Validate the composed ``cfg`` once and run its stage on the typed root; returns the value
    named by the stage's ``OPTIMIZED_METRIC`` (for sweepers)."""
    root, module, out_dir = check_run(cfg, out_dir)
    group = run_group(root.logger, root.experiment_name)
    if group != root.logger.group:  # a sweep's wandb group: the saved config says so
        root.logger.group = group
        cfg.logger.group = group
    tree = resolved_config_yaml(cfg)
    print_start(root, cfg, out_dir, tree)
    write_text(out_dir / "config_resolved.yaml", tree)
    threads = runtime.setup(root.seed, root.threads)["threads"]
    write_run_info(out_dir, {
        "stage": root.stage,
        "experiment": root.experiment_name,
        "config_hash": run_config_hash(root),
        "git_commit": git_commit(),
        "status": "running",
        **weights_fields(root),  # weights=random: labelled (fuse_repro.weights_label)
    }, drop=("error",))  # a resumed run's earlier failure is not this run's
    log.info("torch threads: %d", threads)
    start = time.perf_counter()
    try:
        result = module.run(root, out_dir) or {}
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        write_run_info(out_dir, {"status": status, "error": one_line(err)})
        raise
    write_run_info(out_dir, {"status": "finished"})
    log.info("stage %s finished in %.1f s", root.stage, time.perf_counter() - start)
    print(f"run folder: {out_dir}", flush=True)  # the last line: scripts can `tail -1`
    return optimized_value(root, module, result)


# --------------------------------------------------------------------------------------------
# the entry point's error handling


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _full_errors(cfg: DictConfig | None = None, argv: list[str] | None = None) -> bool:
    """Full tracebacks: ``debug=true`` (config or command line) or ``HYDRA_FULL_ERROR=1``."""
    if os.environ.get("FUSE_USER_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR")) == "1":
        return True
    if cfg is not None and cfg.get("debug") is True:
        return True
    args = sys.argv[1:] if argv is None else argv
    return any(a.lstrip("+").lower() in ("debug=true", "debug=1", "debug=yes") for a in args)


def _file_log(message: str, exc_info: bool) -> None:
    """Into run.log only (Hydra's file handler), so the terminal keeps one line."""
    root = logging.getLogger()
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (),
                            sys.exc_info() if exc_info else None)
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def remove_if_empty(out_dir: Path) -> bool:
    """Remove a run folder holding only its configs and logs (a run that failed before writing
    anything); a folder with any result in it, e.g. a resumed one, is kept."""
    def empty(folder: Path) -> bool:
        return all(p.name in BOOKKEEPING or (p.is_dir() and empty(p)) for p in folder.iterdir())

    if not out_dir.is_dir() or not empty(out_dir):
        return False
    shutil.rmtree(out_dir, ignore_errors=True)
    return True


# The files of an existing run folder that Hydra (``.hydra/``, its ``<job>.log``) and
# ``run_stage`` (config_resolved.yaml, run_info.json) write before a stage runs, as they were
# before this run started: ``{"folder": Path, "files": {path: (bytes | None, (atime, mtime))},
# "hydra_dir": bool}``, taken by ``RunFolderGuard`` and put back by ``restore_run_folder``.
_SNAPSHOT: dict[str, Any] = {}


def _startup_files(folder: Path, output_subdir: str | None) -> list[Path]:
    """The files a run writes into ``folder`` before its stage starts (existing or not)."""
    names = [folder / n for n in ("config_resolved.yaml", "run_info.json", "run.log")]
    names += sorted(folder.glob("*.log"))
    if output_subdir:
        sub = folder / output_subdir
        names += [sub / n for n in ("config.yaml", "hydra.yaml", "overrides.yaml")]
        names += sorted(sub.glob("*")) if sub.is_dir() else []
    return sorted(set(names))


def snapshot_run_folder(folder: Path, output_subdir: str | None = ".hydra") -> None:
    """Remember the startup files of an existing run folder (a resume), so that a run that is
    refused can leave it byte for byte as it was (``restore_run_folder``)."""
    _SNAPSHOT.clear()
    if not folder.is_dir():
        return
    files: dict[Path, tuple[bytes | None, tuple[int, int] | None]] = {}
    for path in _startup_files(folder, output_subdir):
        if path.is_file():
            st = path.stat()
            files[path] = (path.read_bytes(), (st.st_atime_ns, st.st_mtime_ns))
        else:
            files[path] = (None, None)
    hydra_dir = folder / output_subdir if output_subdir else None
    _SNAPSHOT.update(folder=folder, files=files, output_subdir=output_subdir,
                     hydra_dir=hydra_dir is not None and hydra_dir.is_dir())


def restore_run_folder(folder: Path) -> bool:
    """Put back the startup files of ``folder`` as ``snapshot_run_folder`` found them (files
    this run created are removed); False when no snapshot of that folder was taken."""
    if not _SNAPSHOT or Path(_SNAPSHOT["folder"]).resolve() != Path(folder).resolve():
        return False
    snap = dict(_SNAPSHOT)
    _SNAPSHOT.clear()
    files: dict[Path, tuple[bytes | None, tuple[int, int] | None]] = snap["files"]
    for path in _startup_files(folder, snap["output_subdir"]):
        if path not in files and path.is_file():
            path.unlink()  # created by this run
    for path, (data, times) in files.items():
        if data is None:
            if path.is_file():
                path.unlink()
            continue
        if not path.is_file() or path.read_bytes() != data:
            # in place: Hydra's open log handle stays valid
            with open(path, "r+b" if path.is_file() else "wb") as fh:
                fh.write(data)
                fh.truncate()
        assert times is not None
        os.utime(path, ns=times)
    hydra_dir = folder / snap["output_subdir"] if snap["output_subdir"] else None
    if hydra_dir is not None and not snap["hydra_dir"] and hydra_dir.is_dir():
        shutil.rmtree(hydra_dir, ignore_errors=True)
    return True


class RefusedFolder(BaseException):
    """A run folder refused by ``RunFolderGuard`` before Hydra creates it. A BaseException, as
    Hydra turns an ``Exception`` raised in a callback into a warning and goes on; ``main``
    prints its ``error`` (a ``ConfigError``) as one line and exits 2."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


def check_folder_path(folder: str, key: str) -> None:
    """Refuse a run folder whose path holds ``${``: Hydra stores the run's folder in its own
    config (``hydra.runtime.output_dir``), where ``${...}`` is read back as an interpolation, so
    no run can set up its log there (Hydra would fail after creating the folder)."""
    if "${" in folder:
        raise RefusedFolder(ConfigError(
            f"run folder {folder!r} contains '${{', which Hydra reads back as an interpolation: "
            f"no run can work in it; choose a folder without '${{' ({key}=<folder>, or "
            f"FUSE_LOG_DIR=<folder>)"))


class RunFolderGuard(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): before Hydra creates the run folder or
    writes ``.hydra/`` and its log into it, refuse a folder no run can use
    (``check_folder_path``) and remember what an existing folder held there
    (``snapshot_run_folder``), so that a refused resume changes nothing (``run_task`` restores
    it)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _SNAPSHOT.clear()
        try:
            folder = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
            subdir = OmegaConf.select(config, "hydra.output_subdir")
        except Exception:  # noqa: BLE001  (an unresolvable run dir: Hydra itself will say so)
            return
        check_folder_path(str(folder), "hydra.run.dir")
        snapshot_run_folder(folder, None if subdir is None else str(subdir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            folder = os.path.abspath(str(OmegaConf.select(config, "hydra.sweep.dir")))
        except Exception:  # noqa: BLE001  (an unresolvable sweep dir: Hydra itself will say so)
            return
        check_folder_path(folder, "hydra.sweep.dir")


def hydra_quote(value: str) -> str:
    """``value`` as a Hydra override value: as is when Hydra's grammar takes it unquoted, else
    single-quoted with Hydra's escapes (a quote, an interpolation's ``${`` taken literally, and
    the backslashes before either)."""
    if value and all(ch.isascii() and (ch.isalnum() or ch in "/._-:+~@") for ch in value):
        return value
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", escaped)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def resume_command(out_dir: Path, argv: list[str] | None = None) -> str:
    """The command that continues this run in the same folder: the interpreter actually running
    and the script as it was called, the same overrides, ``hydra.run.dir=<folder>``; quoted so
    that both the shell and Hydra's override parser take it back."""
    argv = sys.argv if argv is None else argv
    script = argv[0] if argv and argv[0].endswith(".py") else "run.py"
    args = [a for a in argv[1:] if not a.startswith(("hydra.run.dir=", "-m", "--multirun"))]
    return shlex.join([sys.executable, script, *args,
                       f"hydra.run.dir={hydra_quote(str(out_dir))}"])


def run_task(cfg: DictConfig) -> float | None:
    """The Hydra task function of ``run.py``: ``run_stage`` with one-line user errors."""
    multirun = _in_multirun()
    out_dir = output_dir_of(cfg)
    try:
        return run_stage(cfg)
    except KeyboardInterrupt:
        if multirun:
            raise
        print(f"\ninterrupted; finished items are kept. Resume with: {resume_command(out_dir)}",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except FuseError as err:
        if _full_errors(cfg):
            raise
        _file_log(f"stage {cfg.get('stage')} failed: {one_line(err)}", exc_info=True)
        if multirun:
            write_run_info(out_dir, {"status": "failed", "error": one_line(err)})
            print(f"error: job {out_dir.name}: {one_line(err)}", file=sys.stderr, flush=True)
            return None
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        if not (getattr(err, "_fuse_refused", False) and restore_run_folder(out_dir)):
            remove_if_empty(out_dir)
        raise SystemExit(EXIT_USER_ERROR) from None
    except Exception as err:
        err._fuse_in_task = True  # type: ignore[attr-defined]  # a bug: keep its traceback
        _file_log(f"stage {cfg.get('stage')} failed; outputs so far are in {out_dir}", True)
        if multirun and not _full_errors(cfg):
            # One failed job must not stop the sweep; its traceback is in its run.log.
            write_run_info(out_dir, {"status": "failed", "error": one_line(err)})
            print(f"error: job {out_dir.name} failed ({type(err).__name__}: {one_line(err)}); "
                  f"traceback in {out_dir / 'run.log'}", file=sys.stderr, flush=True)
            return None
        raise


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """The override lists of the jobs ``python run.py -m <overrides>`` will run, in Hydra's job
    order (the basic sweeper's cartesian product of the command line and ``hydra.sweeper.params``),
    or None when another sweeper decides them while it runs."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override() and o.input_line]
    cfg = compose("config", overrides=plain, return_hydra_config=True)
    if OmegaConf.select(cfg, "hydra.sweeper._target_") != \
            "hydra._internal.core_plugins.basic_sweeper.BasicSweeper":
        return None
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    return BasicSweeper.split_arguments(parser.parse_overrides(lines), None)[0]


def check_sweep(overrides: list[str]) -> int:
    """Before a multirun starts, compose and check every job's config (``check_config``: the
    schema, the device, the stage's own checks), so that one bad value stops the sweep before
    its first job rather than after the others ran; returns the number of jobs checked. Its
    warnings are not shown (each job's own check shows them when the job runs)."""
    from hydra import initialize_config_dir

    from fuse_repro.config.hashing import REPO_ROOT

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"), \
            _quiet_warnings():
        jobs = sweep_jobs(overrides)
        if jobs is None:
            return 0
        from hydra import compose

        for num, job in enumerate(jobs):
            try:
                check_config(compose("config", overrides=job), Path("/nonexistent/sweep-check"))
            except _user_error_types() as err:
                line = one_line(err) if isinstance(err, FuseError) else compose_error_line(err, job)
                raise ConfigError(f"sweep job {num} ({' '.join(job)}): {line}; no job was run")
    return len(jobs)


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    """Log records up to WARNING dropped for the block (the sweep's pre-check, which would say
    each job's warnings once more than the job itself)."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import yaml

    return (FuseError, HydraException, OmegaConfBaseException, yaml.YAMLError)


def main(hydra_entry: Callable[[], Any], argv: list[str] | None = None) -> int:
    """Run ``hydra_entry`` (run.py's ``@hydra.main`` function) and return the exit status.

    Hydra is asked to re-raise (``HYDRA_FULL_ERROR=1`` for the call) so that composition errors
    (an unknown group option, a misspelled key) are one line here too; with ``debug=true`` or a
    user-set ``HYDRA_FULL_ERROR=1`` they keep their traceback.
    """
    from fuse_repro import sweep

    full = _full_errors(argv=argv)
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["FUSE_USER_FULL_ERROR"] = "1" if full else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sweep.FAILED_JOBS.clear()
    args = sys.argv[1:] if argv is None else argv
    try:
        if {"-m", "--multirun"} & set(args) and not any(
                a.startswith("-") and a not in ("-m", "--multirun") for a in args):
            check_sweep([a for a in args if a not in ("-m", "--multirun")])
        hydra_entry()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except RefusedFolder as refused:
        if full:
            raise refused.error from None
        print(f"error: {one_line(refused.error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_error_types() as err:
        if full:
            raise
        if isinstance(err, FuseError):
            line = one_line(err)
        else:  # Hydra / OmegaConf while composing: an unknown option or key, a bad override
            line = one_line(ValueError(compose_error_line(err, args)))
        print(f"error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except AssertionError as err:
        # Hydra asserts (rather than raising its own error) on some overrides it cannot apply,
        # e.g. a key inside a node that is null. Only before the task ran is that the user's.
        if full or getattr(err, "_fuse_in_task", False):
            raise
        print(f"error: {one_line(ValueError(compose_error_line(err, args)))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except AttributeError as err:
        # OmegaConf fails so when an override merges a mapping into a node that is null by
        # default (target.tokenizer={...}); only before the task ran, and only that, is the user's.
        if full or getattr(err, "_fuse_in_task", False) or "object_type=NoneType" not in str(err):
            raise
        print(f"error: {one_line(ValueError(compose_error_line(err, args)))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:
        # Before the task ran: Hydra could not create the run folder or save its configs.
        if full or getattr(err, "_fuse_in_task", False):
            raise
        where = err.filename or "the run folder"
        print(f"error: cannot write {where}: {err.strerror or err}; choose a writable folder "
              "(hydra.run.dir=<folder>, or FUSE_LOG_DIR=<folder>)", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        os.environ.pop("FUSE_USER_FULL_ERROR", None)
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved
    return _sweep_status(sweep.FAILED_JOBS)


def _sweep_status(failed: list[str]) -> int:
    """0, or 1 with one line naming the failed jobs of a multirun (at most 10)."""
    if not failed:
        return 0
    more = f"; and {len(failed) - 10} more" if len(failed) > 10 else ""
    print(f"error: {len(failed)} sweep job(s) failed: {'; '.join(failed[:10])}{more}",
          file=sys.stderr)
    return 1
