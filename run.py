"""fuse-repro entry point: `python run.py [stage=...] [overrides]`. See README.md."""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import fuse_repro.config  # noqa: F401  (registers the ${fuse_root:} resolver before composing)
from fuse_repro.app import run_stage


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # One failed job must not stop the sweep (or its sweep_summary.csv); the failure is
        # logged in that job's run.log and the summary shows it without metrics.
        try:
            return run_stage(cfg)
        except Exception:  # noqa: BLE001
            return None
    return run_stage(cfg)


if __name__ == "__main__":
    main()
