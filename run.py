"""fuse-repro entry point: `python run.py [stage=...] [overrides]`. See README.md.

User errors print one line (`error: ...`) and exit 2; `debug=true` or HYDRA_FULL_ERROR=1 shows
the traceback. A multirun exits non-zero when any job failed, naming them.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import fuse_repro.config  # noqa: F401  (registers resolvers and schemas before composing)
from fuse_repro import app


# An absolute path, so run.main also composes when run.py is imported (tests call it in-process).
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"),
            config_name="config")
def main(cfg: DictConfig) -> float | None:
    return app.run_task(cfg)


if __name__ == "__main__":
    sys.exit(app.main(main))
