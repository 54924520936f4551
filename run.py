"""fuse-repro entry point: `python run.py [stage=...] [overrides]`. See README.md."""

import hydra
from omegaconf import DictConfig

import fuse_repro.config  # noqa: F401  (registers the ${fuse_root:} resolver before composing)
from fuse_repro.app import run_stage


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_stage(cfg)


if __name__ == "__main__":
    main()
