"""Pipeline stages: each module exposes ``run(cfg, out_dir) -> dict``."""
