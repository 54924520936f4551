"""Experiment tracking: a thin wrapper over wandb that every stage can call unconditionally.

``open_tracker`` returns a ``Tracker``; with ``logger=none`` or ``logger.mode=disabled`` its calls
are no-ops, so stage code never branches on the logger. The run folder stays the source of truth:
tables and metrics are always built from files, never from the dashboard (STYLE.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fuse_repro.config import FuseConfig, LoggerConfig, git_commit, to_plain
from fuse_repro.weights_label import is_random

log = logging.getLogger(__name__)


class Tracker:
    """Logs to a wandb run when one is open, else does nothing."""

    def __init__(self, run: Any | None = None, log_items: bool = False) -> None:
        self.run = run
        self.log_items = log_items and run is not None

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = value

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a wandb.Table; cells that are PIL images become wandb.Image thumbnails."""
        if self.run is None:
            return
        import wandb
        from PIL import Image

        def cell(value: Any) -> Any:
            if isinstance(value, Image.Image):
                thumb = value.copy()
                thumb.thumbnail((128, 128))
                return wandb.Image(thumb)
            return value

        self.run.log({name: wandb.Table(columns=columns, data=[[cell(v) for v in r] for r in rows])})


def run_group(logger: LoggerConfig, experiment: str) -> str | None:
    """The wandb group this job's run goes to: in a multirun the sweep
    (``<experiment>-sweep-<sweep folder>``) unless ``logger.group`` was set to something other
    than its default ``${experiment_name}``; else ``logger.group``. The entry point writes it
    into the saved config, so the config says where the run went."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    group = logger.group
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN and group in (None, experiment):
        group = f"{experiment}-sweep-{Path(str(hydra_cfg.sweep.dir)).name}"
    return group


def run_names(logger: LoggerConfig, experiment: str, out_dir: Path,
              job_type: str) -> tuple[str | None, str]:
    """(wandb group, run name). In a multirun the group is the sweep (``<experiment>-sweep-
    <sweep folder>``) and the run name the job's overrides, unless ``logger.group`` was set to
    something other than its default ``${experiment_name}``; a single run keeps
    ``logger.group`` and is named ``<experiment>-<job type>-<run folder>``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    group = run_group(logger, experiment)
    name = f"{experiment}-{job_type}-{out_dir.name}"
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN:
        overrides = [str(o) for o in hydra_cfg.overrides.task]
        name = f"{hydra_cfg.job.num}: {' '.join(overrides)}" if overrides else name
    return group, name


@contextlib.contextmanager
def open_tracker(
    cfg: FuseConfig, out_dir: Path, job_type: str, extra_config: dict[str, Any] | None = None
) -> Iterator[Tracker]:
    """Open a wandb run for this job (``cfg.logger``) and always close it, with exit code 1 on
    failure.

    The resolved config, the git commit and ``extra_config`` (e.g. cache keys) are stored in the
    run's config. Offline runs land in ``out_dir/wandb`` for ``wandb sync``.
    """
    logger = cfg.logger
    if logger.name == "none" or logger.mode == "disabled":
        yield Tracker(None)
        return

    import wandb

    config = to_plain(cfg)
    config["git_commit"] = git_commit()
    config.update(extra_config or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    group, run_name = run_names(logger, cfg.experiment_name, out_dir, job_type)
    run = wandb.init(
        project=logger.project,
        entity=logger.entity,
        group=group,
        tags=list(logger.tags) + (["random-weights"] if is_random(cfg) else []),
        job_type=job_type,
        name=run_name,
        mode=logger.mode,
        dir=str(out_dir),
        config=config,
        reinit="finish_previous",
    )
    tracker = Tracker(run, log_items=logger.log_items)
    exit_code = 1
    try:
        yield tracker
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
        log.info("wandb run closed (%s, exit code %d)", logger.mode, exit_code)
