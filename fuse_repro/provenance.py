"""Provenance of a caption folder: the config fields that determine its captions.

A folder's ``captions_config.json`` holds the hash and the flattened fields (``RESULT_KEYS``:
seed, models, objective, adapter, search, dataset minus its subset, resolved with paths and
device masked). A rerun into the folder with other settings is refused with one line naming
the differing keys, unless ``resume=force``: then the folder is marked mixed and every caption
line carries the ``config_hash`` it was made with. ``records.merge_captions`` refuses shards
whose hashes differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fuse_repro.config.hashing import placeholders
from fuse_repro.records import (
    CAPTIONS_NAME,
    PROVENANCE_NAME,
    RESUME_MODES,
    ProvenanceError,
    read_jsonl,
    read_provenance,
    write_json,
    write_jsonl,
)

log = logging.getLogger(__name__)

# Root keys whose values decide every caption (the dataset minus its subset: which items are
# captioned does not change how each one is). Paths, device, logging and threads never do.
RESULT_KEYS = ("seed", "source", "objective", "adapter", "search", "dataset")
_MASKED = ("paths", "device", "hydra")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: obj}




def results_fields(cfg: Any, method: str | None = None) -> dict[str, Any]:
    """The flattened config fields that determine the captions (``RESULT_KEYS``), resolved with
    paths and device masked, so moving data or switching device keeps the same hash."""
    from omegaconf import DictConfig, OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(raw, dict)
    for key in _MASKED:
        if key in raw:
            raw[key] = placeholders(raw[key], key)
    masked = OmegaConf.create(raw)
    kept = {k: OmegaConf.to_container(masked[k], resolve=True) if isinstance(
        masked[k], DictConfig) else masked[k] for k in RESULT_KEYS if k in masked}
    if isinstance(kept.get("dataset"), dict):
        kept["dataset"] = {k: v for k, v in kept["dataset"].items() if k != "subset"}
    if method is not None and isinstance(kept.get("search"), dict):
        kept["search"] = {**kept["search"], "method": method}
    return _flat(kept)


def fields_hash(fields: Mapping[str, Any]) -> str:
    text = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
            for k in keys if old.get(k, "<unset>") != new.get(k, "<unset>")]


def check_provenance(folder: str | Path, fields: Mapping[str, Any], resume: str = "check",
                     resume_hint: str = "") -> str | None:
    """Record (or check) the settings that make ``folder``'s captions; returns the hash each
    caption line must carry (None unless ``resume=force`` mixed two settings).

    A folder whose captions were made with other settings is refused, naming the differing
    keys; ``resume=force`` accepts it and from then on every caption line carries its hash.
    """
    if resume not in RESUME_MODES:
        raise ProvenanceError(f"resume={resume!r} is not one of {list(RESUME_MODES)}")
    folder = Path(folder)
    new_hash = fields_hash(fields)
    old = read_provenance(folder)
    captions = folder / CAPTIONS_NAME
    has_captions = captions.is_file() and captions.stat().st_size > 0
    record = {"hash": new_hash, "fields": dict(fields)}
    if old is None or not has_captions:
        if old is not None and old.get("mixed"):
            record["mixed"] = True
        write_json(folder / PROVENANCE_NAME, record)
        return new_hash if record.get("mixed") else None
    if old.get("hash") == new_hash and not old.get("mixed"):
        return None
    if old.get("hash") != new_hash and resume != "force":
        diff = _differences(old.get("fields") or {}, fields)
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ProvenanceError(
            f"{folder} holds captions made with other settings "
            f"({shown or 'hash ' + str(old.get('hash'))}); "
            f"rerun with the same settings, use a new run folder, or add resume=force to mix "
            f"them (each caption then records its config hash){resume_hint}")
    # Mixed provenance: stamp the lines written so far with the hash they were made with.
    if not old.get("mixed"):
        rows = read_jsonl(captions)
        write_jsonl(captions, [{**r, "config_hash": r.get("config_hash", old.get("hash"))}
                               for r in rows])
        log.warning("resume=force: %s now mixes captions of config %s and %s; each line "
                    "records its config_hash", folder, old.get("hash"), new_hash)
    write_json(folder / PROVENANCE_NAME, {**record, "mixed": True,
                                          "previous": sorted({*old.get("previous", []),
                                                              str(old.get("hash"))} - {new_hash})})
    return new_hash
