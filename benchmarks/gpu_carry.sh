#!/usr/bin/env bash
# Prepare the folder that benchmarks/gpu_check.sh needs on a lent GPU machine (the device tool).
#
# That machine's image has python3 with torch, transformers, tokenizers, safetensors, numpy,
# timm and tqdm, but not this project's other dependencies, and reaches no network. This copies
# the pure-Python packages it lacks from this checkout's .venv (hydra-core, omegaconf, antlr4,
# open_clip_torch, ftfy, wcwidth, wordfreq with its English lists only, langcodes, locate), and
# FUSE_CACHE_DIR's tokenized corpora and GPT-2 BPE files (so neither npm nor a minute of
# tokenization is needed there), into one git-ignored folder (~40 MB; the tool carries 64 MiB).
#
#   benchmarks/gpu_carry.sh [folder]        # default .gpucarry; FUSE_CACHE_DIR default .cache
#
# Then one device call, with carry [".gpucarry"] (as the first run, docs/gpu/):
#   export PYTHONPATH=$PWD/.gpucarry/site:$PWD FUSE_CACHE_DIR=$PWD/.gpucarry/cache PYTHON=python3
#   bash benchmarks/gpu_check.sh $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log
# Fill the cache first by running gpu_check.sh here once as a CPU smoke test (its header).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpucarry}
CACHE=${FUSE_CACHE_DIR:-.cache}
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for need in "$CACHE/tokenized" "$CACHE/tokenizers"; do
  [[ -d "$need" ]] || { echo "error: $need not found; run benchmarks/gpu_check.sh here once as a CPU smoke test (see its header) with FUSE_CACHE_DIR=$CACHE" >&2; exit 2; }
done
rm -rf "$DEST" && mkdir -p "$DEST/site" "$DEST/cache"
for pkg in wordfreq open_clip hydra omegaconf antlr4 ftfy wcwidth langcodes locate; do
  cp -r "$SITE/$pkg" "$DEST/site/"
done
for dist in wordfreq open_clip_torch hydra_core omegaconf antlr4_python3_runtime ftfy wcwidth langcodes locate; do
  cp -r "$SITE/$dist"-*.dist-info "$DEST/site/"
done
find "$DEST/site/wordfreq/data" -type f ! -name '*_en.*' -delete  # English lists only
find "$DEST/site" -name __pycache__ -type d -prune -exec rm -rf {} +
cp -r "$CACHE/tokenized" "$CACHE/tokenizers" "$DEST/cache/"
if [[ "$DEST" != .gpucarry ]]; then  # .gitignore covers the default
  git check-ignore -q "$DEST" || echo "note: $DEST is not git-ignored: the device tool would send it twice (tracked tree and carry)" >&2
fi
echo "gpu_carry: $(du -sh "$DEST" | cut -f1) in $DEST (git-ignored); carry it as [\"$DEST\"]"
