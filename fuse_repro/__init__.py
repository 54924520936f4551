"""fuse-repro: a reproducibility pipeline for FUSE (Williams & Kolter, arXiv 2408.04816)."""
