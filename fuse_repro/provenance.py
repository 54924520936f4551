"""Provenance of a caption folder: the config fields that determine its captions.

A folder's ``captions_config.json`` holds the hash and the flattened fields (``RESULT_KEYS``:
seed, models, objective, adapter, search, dataset minus its subset, paths and devices masked). A
rerun into the folder with other settings is refused with one line naming the differing keys,
unless ``resume=force``: then the folder is marked mixed, records every earlier config's fields
(``previous_fields``, by hash) and every caption line carries the ``config_hash`` it was made
with. The dataset's files count by content (``annotations`` as ``sha256:...``, ``image_dir`` as
a hash of its file names and sizes), never by location. ``records.merge_captions`` refuses
shards whose hashes differ.

Folders written before the dataset's files counted by content (commit 36d225d) record them by
their (masked) path. Such a record is compared in today's form where it can be: the recorded
path, if it still holds a file (a folder), is named by its content now, so a plain resume of an
unchanged setup goes on and the record is rewritten in today's form. A recorded path that is
gone cannot be compared: the refusal says so and that ``resume=force`` resumes anyway.

``check_provenance`` only decides (it reads, never writes); ``record_provenance`` carries the
decision out through the writers in ``records``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuse_repro.config import FuseConfig, stable_hash
from fuse_repro.config.hashing import MASKED_PATHS, masked_groups
from fuse_repro.records import (
    CAPTIONS_NAME,
    ProvenanceError,
    read_provenance,
    stamp_captions,
    write_provenance,
)

log = logging.getLogger(__name__)

# Root keys whose values decide every caption (the dataset minus its subset: which items are
# captioned does not change how each one is). Paths, device, logging and threads never do.
RESULT_KEYS = ("seed", "source", "objective", "adapter", "search", "dataset")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: obj}


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes (what the captions depend on, wherever it lives)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def folder_digest(path: str | Path) -> str:
    """``listing-sha256:<hex>`` of a folder's file names and sizes (not its location; reading
    every image would cost more than the check is worth)."""
    entries = sorted((e.name, e.stat().st_size) for e in os.scandir(path) if e.is_file())
    return "listing-sha256:" + hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()


def _dataset_identity(dataset: Any, masked: dict[str, Any]) -> dict[str, Any]:
    """The dataset's fields minus its subset, its files named by content instead of location:
    the same annotation file at another path (a moved checkout, the bundled demo set under
    another clone) keeps the hash; a missing file keeps its masked path."""
    kept = {k: v for k, v in masked.items() if k != "subset"}
    if dataset.annotations and Path(dataset.annotations).is_file():
        kept["annotations"] = file_digest(dataset.annotations)
    if dataset.image_dir and Path(dataset.image_dir).is_dir():
        kept["image_dir"] = folder_digest(dataset.image_dir)
    return kept


def results_fields(cfg: FuseConfig, method: str | None = None) -> dict[str, Any]:
    """The flattened config fields that determine the captions (``RESULT_KEYS``), with paths and
    devices masked and the dataset's files named by their content, so moving data or switching
    device keeps the same hash. ``method`` stands in for ``search.method`` (the pipeline runs
    several)."""
    kept = masked_groups(cfg, RESULT_KEYS)
    kept["dataset"] = _dataset_identity(cfg.dataset, kept["dataset"])
    if method is not None:
        kept["search"] = {**kept["search"], "method": method}
    return _flat(kept)


def fields_hash(fields: Mapping[str, Any]) -> str:
    return stable_hash(dict(fields))


def path_roots(cfg: FuseConfig) -> dict[str, str]:
    """``{name: path}`` of the path roots a recorded path is masked by (``<paths.name>/...``),
    to read a path recorded by an earlier version back (``check_provenance``)."""
    return {name: str(getattr(cfg.paths, name)) for name in MASKED_PATHS}


# The dataset's files that a folder names by content, each with the prefix of today's form, the
# kind of path it is and the digest that names it. Before commit 36d225d they were recorded by
# their masked path.
_CONTENT_KEYS = {
    "dataset.annotations": ("sha256:", os.path.isfile, file_digest),
    "dataset.image_dir": ("listing-sha256:", os.path.isdir, folder_digest),
}


def _unmask(value: str, roots: Mapping[str, str]) -> str | None:
    """A recorded path with its ``<paths.name>`` root put back (None for an unknown root)."""
    match = re.fullmatch(r"<paths\.(\w+)>(.*)", value, flags=re.DOTALL)
    if match is None:
        return value
    root = roots.get(match.group(1))
    return None if root is None else root.rstrip("/") + match.group(2)


def legacy_fields(old: Mapping[str, Any], new: Mapping[str, Any],
                  roots: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``old`` (a folder's recorded fields) with each dataset file that an earlier version
    recorded by its path named by its content instead, where that path still holds one; and
    ``{key: recorded path}`` of those whose path is gone (they cannot be compared)."""
    upgraded, gone = dict(old), {}
    for key, (prefix, exists, digest) in _CONTENT_KEYS.items():
        was, now = old.get(key), new.get(key)
        if not (isinstance(was, str) and isinstance(now, str) and now.startswith(prefix)) \
                or was.startswith(prefix):
            continue  # today's form, or no file on either side: compared as recorded
        path = _unmask(was, roots)
        if path is not None and exists(path):
            upgraded[key] = digest(path)
        else:
            gone[key] = was
    return upgraded, gone


@dataclass(frozen=True)
class Provenance:
    """What a caption run does to a folder's provenance: the record to write, whether the lines
    so far must be stamped with ``stamp_old`` first, and the hash each new line carries."""

    record: dict[str, Any] | None
    stamp_old: str | None
    line_hash: str | None


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
            for k in keys if old.get(k, "<unset>") != new.get(k, "<unset>")]


def check_provenance(folder: str | Path, fields: Mapping[str, Any], resume: str,
                     roots: Mapping[str, str] | None = None) -> Provenance:
    """Decide whether ``folder`` may take captions made with ``fields``; writes nothing.

    A folder whose captions were made with other settings is refused (``ProvenanceError``),
    naming the differing keys; ``resume=force`` accepts it and from then on every caption line
    carries its hash. A record in an earlier version's form (dataset files by path) is compared
    in today's (``legacy_fields``; ``roots``, from ``path_roots``, reads its masked paths).
    """
    folder = Path(folder)
    new_hash = fields_hash(fields)
    old = read_provenance(folder)
    captions = folder / CAPTIONS_NAME
    has_captions = captions.is_file() and captions.stat().st_size > 0
    record: dict[str, Any] = {"hash": new_hash, "fields": dict(fields)}
    if old is None or not has_captions:
        mixed = old is not None and bool(old.get("mixed"))
        if mixed:
            record["mixed"] = True
        return Provenance(record, None, new_hash if mixed else None)
    compared, gone = legacy_fields(old.get("fields") or {}, fields, roots or {})
    same = old.get("hash") == new_hash or (not gone and compared == dict(fields))
    if same and not old.get("mixed"):
        if old.get("hash") == new_hash:
            return Provenance(None, None, None)
        log.info("%s: provenance recorded by an earlier version, same settings; rewritten in "
                 "today's form", folder)
        return Provenance(record, None, None)
    if not same and resume != "force":
        raise ProvenanceError(_refusal(folder, old, compared, gone, fields))
    previous = sorted({*old.get("previous", []), str(old.get("hash"))} - {new_hash})
    # every earlier config's values, not only its hash: {hash: fields}
    previous_fields = {**(old.get("previous_fields") or {}),
                       str(old.get("hash")): old.get("fields") or {}}
    previous_fields = {h: f for h, f in previous_fields.items() if h in previous}
    return Provenance({**record, "mixed": True, "previous": previous,
                       "previous_fields": previous_fields},
                      None if old.get("mixed") else str(old.get("hash")), new_hash)


def _refusal(folder: Path, old: Mapping[str, Any], compared: Mapping[str, Any],
             gone: Mapping[str, str], fields: Mapping[str, Any]) -> str:
    """The one line refusing a resume: the differing keys, and the recorded paths (an earlier
    version's form) that can no longer be compared, with what to do."""
    diff = _differences({k: v for k, v in compared.items() if k not in gone},
                        {k: v for k, v in fields.items() if k not in gone})
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    force = "resume=force to mix them (each caption then records its config hash)"
    newer = [k for k in fields if k not in compared and k not in gone]
    if newer and not gone:
        shown += "; '<unset>' marks a setting the version that wrote the folder did not have yet"
    if not gone:
        return (f"{folder} holds captions made with other settings "
                f"({shown or 'hash ' + str(old.get('hash'))}); "
                f"rerun with the same settings, use a new run folder, or add {force}")
    paths = ", ".join(f"{k} as the path {v!r}" for k, v in sorted(gone.items()))
    line = (f"{folder} was written by an earlier version, which recorded {paths} instead of "
            f"its content, and that path no longer exists, so its data cannot be compared")
    if diff:
        return (f"{line}; other settings differ too ({shown}); rerun with the same settings, "
                f"use a new run folder, or add {force}")
    return (f"{line}; if the data are the same, add {force}, else use a new run folder")


def record_provenance(folder: str | Path, fields: Mapping[str, Any], resume: str,
                      roots: Mapping[str, str] | None = None) -> str | None:
    """``check_provenance``, then write what it decided; returns the hash each new caption line
    must carry (None unless the folder mixes settings)."""
    folder = Path(folder)
    decision = check_provenance(folder, fields, resume, roots)
    if decision.stamp_old is not None:
        stamp_captions(folder / CAPTIONS_NAME, decision.stamp_old)
        log.warning("resume=force: %s now mixes captions of config %s and %s; each line "
                    "records its config_hash", folder, decision.stamp_old, decision.line_hash)
    if decision.record is not None:
        write_provenance(folder, decision.record)
    return decision.line_hash
