"""Every output file of a run: atomic writes, JSONL, caption files, run_info.json, provenance.

One module owns the files a run leaves behind (STYLE.md: "one module owns every output file"):

- ``write_text`` is the one atomic writer (temp file in the same folder, fsync, rename); every
  JSON, JSONL, CSV and Markdown output goes through it, and ``atomic_dir`` does the same for a
  folder (cache entries). A folder that cannot be written is one ``OutputError`` line.
- ``read_jsonl`` / ``append_jsonl``: the incremental, crash-safe JSONL pair (a torn last line
  from a crash mid-write is dropped with a warning; anything else malformed is an error).
- Captions: ``read_captions`` reads our ``captions.jsonl`` or the standard COCO results JSON
  (``[{"image_id", "caption"}]``) and says which it got; ``merge_captions`` joins shard files.
- ``write_run_info`` / ``read_run_info``: the labels ``stage=table`` and the sweep summary read.
- ``read_provenance``: the config fields that made a folder's captions (``fuse_repro.provenance``
  writes and checks them; ``merge_captions`` refuses shards whose hashes differ).
- ``id_sort_key`` / ``natural_key``: the sort keys every output is ordered by.

Outputs diff cleanly: sorted JSON keys, no timestamps inside artifacts, stable sort keys.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuse_repro.errors import FuseError

log = logging.getLogger(__name__)

CAPTIONS_NAME = "captions.jsonl"
# Mean losses of a caption folder's captions (stage=caption, each pipeline method).
OBJECTIVE_NAME = "objective.json"
RUN_INFO_NAME = "run_info.json"
# Beside a captions file: the config fields that made it (decided by fuse_repro.provenance).
PROVENANCE_NAME = "captions_config.json"
METRICS_NAME = "metrics.json"
# Beside a captions file: one line per item that could not be captioned.
ERRORS_NAME = "errors.jsonl"
PER_CAPTION_NAME = "per_caption.jsonl"


class OutputError(FuseError):
    """An output file or folder cannot be written (read-only, missing, full disk)."""


class RecordsError(FuseError, ValueError):
    """A results file that cannot be read as captions (malformed, conflicting, mixed)."""


class ProvenanceError(FuseError):
    """Captions made with different settings would be mixed in one folder or merge."""


# --------------------------------------------------------------------------------------------
# sort keys


def id_sort_key(item_id: Any) -> tuple[int, int, str]:
    """Sort key that orders numeric ids numerically ("9" < "10") and others as text after them.

    Used wherever outputs are sorted by id, so merged shards and per-caption files diff cleanly.
    """
    text = str(item_id)
    if text.isdigit():
        return (0, int(text), text)
    return (1, 0, text)


def natural_key(text: str) -> list[Any]:
    """Sort key treating digit runs as numbers, so job folder 10 sorts after job folder 9."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", text) if part]


# --------------------------------------------------------------------------------------------
# atomic writes


def _output_error(path: Path, err: OSError) -> OutputError:
    reason = err.strerror or type(err).__name__
    return OutputError(f"cannot write {path}: {reason}; choose a writable folder "
                       "(hydra.run.dir=<folder>, or FUSE_LOG_DIR / FUSE_CACHE_DIR)")


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a temp file in the same folder, fsynced,
    then renamed over ``path``. Readers never see a half-written file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _output_error(path, err) from err
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        raise _output_error(path, err) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def json_text(obj: Any, allow_nan: bool = True) -> str:
    """Canonical JSON document: sorted keys, indent 2, trailing newline (diffs cleanly)."""
    return json.dumps(obj, sort_keys=True, indent=2, default=str, allow_nan=allow_nan) + "\n"


def json_line(obj: Any, allow_nan: bool = True) -> str:
    """One JSONL line: sorted keys, unescaped UTF-8, trailing newline."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=allow_nan) + "\n"


def write_json(path: str | Path, obj: Any, allow_nan: bool = True) -> Path:
    """Atomic JSON write (see ``json_text``)."""
    return write_text(path, json_text(obj, allow_nan))


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]],
                allow_nan: bool = True) -> Path:
    """Atomic JSONL write, one sorted-key object per line."""
    return write_text(path, "".join(json_line(r, allow_nan) for r in rows))


def atomic_dir(final: str | Path, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Fill a folder under a temporary name, then rename it to ``final``.

    A crash leaves no half-written folder. Without ``replace`` an existing ``final`` is kept
    (and ``write`` not called): a concurrent writer's complete copy wins. With ``replace`` the
    new copy replaces it (a damaged cache entry being rewritten).
    """
    final = Path(final)
    if final.exists() and not replace:
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _output_error(final, err) from err
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write(tmp)
        if replace and final.exists():
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
    except PermissionError as err:
        raise _output_error(final, err) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def check_writable(folder: str | Path) -> Path:
    """Fail with one line now, before any work, if ``folder`` cannot take new files."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _output_error(folder, err) from err
    return folder


# --------------------------------------------------------------------------------------------
# reading files a user points at


def read_user_text(path: str | Path, what: str, fix: str,
                   error: type[FuseError] = RecordsError) -> str:
    """The UTF-8 text of ``path``, or one ``error`` line naming the file, what is wrong with
    it (missing, a folder, not UTF-8 text: binary or another encoding, unreadable) and ``fix``
    -- never a decoder traceback. ``what``: the file's role ("captions file", ...)."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {str(p)!r} is a folder, not a file; {fix}")
    if not p.is_file():
        raise error(f"{what} {str(p)!r} not found; {fix}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} {str(p)!r} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                    f"offset {err.start}: a binary file, or text in another encoding); "
                    f"{fix}") from None
    except OSError as err:
        raise error(f"cannot read {what} {str(p)!r}: {err.strerror or type(err).__name__}; "
                    f"{fix}") from None


def parse_json(text: str, path: str | Path, what: str, fix: str,
               error: type[FuseError] = RecordsError) -> Any:
    """``json.loads(text)`` of the file ``path``, or one ``error`` line naming the file, where
    the JSON breaks (a truncated file ends early) and ``fix``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        tail = text.rstrip()
        ending = (" (it ends early: truncated?)" if err.lineno == tail.count("\n") + 1
                  and not tail.endswith(("]", "}")) else "")
        raise error(f"{what} {str(path)!r} is not valid JSON: {err.msg} at line {err.lineno} "
                    f"column {err.colno}{ending}; {fix}") from None


# --------------------------------------------------------------------------------------------
# JSONL


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Objects of a JSONL file (blank lines skipped; a missing file is empty). A torn last line
    (a crash mid-write) is dropped with a warning; any other bad line is an error."""
    p = Path(path)
    if not p.exists():
        return []
    lines = read_user_text(p, "JSONL file", "it must hold one JSON object per line").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                log.warning("%s: dropping a torn last line (interrupted write)", p)
                continue
            raise RecordsError(f"{p}:{number}: not JSON ({exc})") from None
        records.append(obj)
    return records


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one record and fsync, so a crash cannot lose a finished item."""
    p = Path(path)
    try:
        with p.open("a", encoding="utf-8") as fh:
            fh.write(json_line(record))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise _output_error(p, err) from err


# --------------------------------------------------------------------------------------------
# captions files


@dataclass
class CaptionFile:
    """A results file read as caption rows; ``format`` says which kind it was."""

    path: Path
    format: str  # "captions_jsonl" (ours) or "coco_results" (a JSON list of image_id/caption)
    rows: list[dict[str, Any]]


def _check_row(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj.get("caption"), str):
        raise RecordsError(f"{where}: expected an object with 'id' and a string 'caption', got "
                           f"{json.dumps(obj, ensure_ascii=False)[:200]}")
    return obj


def read_captions(path: str | Path) -> CaptionFile:
    """Caption rows of our ``captions.jsonl`` or of a standard COCO results JSON file.

    The format is detected from the content: a file whose first non-blank character is ``[``
    is a COCO results list ``[{"image_id": ..., "caption": ...}]`` (``image_id`` becomes
    ``id``); otherwise it is JSONL with one ``{"id", "caption", ...}`` object per line.
    """
    p = Path(path)
    fix = "set scoring.captions=<a captions.jsonl or a COCO results JSON file>"
    text = read_user_text(p, "captions file", fix)
    if text.lstrip().startswith("["):
        data = parse_json(text, p, "COCO results file", fix)
        rows = []
        for n, obj in enumerate(data):
            if not isinstance(obj, dict) or "image_id" not in obj or not isinstance(
                    obj.get("caption"), str):
                raise RecordsError(
                    f"{p}[{n}]: a COCO results entry needs 'image_id' and a string 'caption', "
                    f"got {json.dumps(obj, ensure_ascii=False)[:200]}")
            row = {k: v for k, v in obj.items() if k != "image_id"}
            row["id"] = str(obj["image_id"])
            rows.append(row)
        return CaptionFile(p, "coco_results", rows)
    rows = [_check_row(obj, f"{p}:{n}") for n, obj in enumerate(read_jsonl(p), 1)]
    return CaptionFile(p, "captions_jsonl", rows)


def read_caption_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of :func:`read_captions` (either format)."""
    return read_captions(path).rows


def rows_method(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The one ``method`` the rows name (None when absent or mixed)."""
    methods = {str(r["method"]) for r in rows if r.get("method") is not None}
    return methods.pop() if len(methods) == 1 else None


def captions_by_id(rows: Sequence[Mapping[str, Any]], method: str | None = None,
                   where: str = "captions") -> dict[str, str]:
    """``{id: caption}``; with ``method`` only that method's rows. A file holding several
    methods needs one, and a duplicate id is an error (which caption to score is a guess)."""
    methods = sorted({str(r["method"]) for r in rows if r.get("method") is not None})
    if method is not None:
        rows = [r for r in rows if str(r.get("method")) == str(method)]
        if not rows:
            raise RecordsError(f"{where}: no captions of method {method!r} (methods: {methods})")
    elif len(methods) > 1:
        raise RecordsError(f"{where} holds captions of several methods {methods}; set "
                           "scoring.method")
    out: dict[str, str] = {}
    for r in rows:
        key = str(r["id"])
        if key in out:
            raise RecordsError(f"{where}: id {key!r} appears more than once")
        out[key] = r["caption"]
    return out


def clean_captions(path: str | Path) -> list[dict[str, Any]]:
    """The finished records of a captions file, rewritten without a torn tail so appending
    after a crash cannot glue two records onto one line."""
    records = read_jsonl(path)
    if Path(path).exists():
        write_jsonl(path, records)
    return records


def append_caption(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one finished caption record (fsynced)."""
    append_jsonl(path, record)


def expand_caption_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their captions.jsonl) and glob patterns, in the order given."""
    out: list[Path] = []
    for entry in paths:
        text = str(entry)
        magic = glob.has_magic(text)
        matches = sorted(glob.glob(text), key=natural_key) if magic else [text]
        if not matches:
            raise RecordsError(f"no shard files match {text!r}; check merge.inputs")
        found = []
        for m in matches:
            p = Path(m)
            if p.is_dir():
                p = p / CAPTIONS_NAME
            elif magic and p.suffix != ".jsonl":
                continue  # a sweep folder's multirun.yaml, sweep_summary.csv, logs ...
            if magic and not p.is_file():
                continue  # a folder of the sweep that is not a caption job
            if not p.is_file():
                raise RecordsError(f"shard captions file {str(p)!r} not found; check merge.inputs")
            found.append(p)
        if not found:
            raise RecordsError(f"no shard captions.jsonl among the matches of {text!r}")
        out.extend(found)
    return out


def merge_captions(paths: Sequence[str | Path], out: str | Path) -> list[dict[str, Any]]:
    """Join shard ``captions.jsonl`` files into ``out``; returns the merged rows.

    Rows are keyed by (id, method). A key seen twice with the same caption is kept once (the
    first copy: timings may differ between reruns); with different captions it is an error,
    since there is no right one to keep. Shards made with different settings (their recorded
    config hashes differ) are refused. Output is sorted by id (numeric ids numerically), then
    method, with sorted JSON keys, so merged shards equal one unsharded run line for line.
    """
    files = expand_caption_paths(paths)
    if not files:
        raise RecordsError("merge needs at least one shard file (merge.inputs)")
    hashes: dict[str, list[str]] = {}
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    origin: dict[tuple[str, str], Path] = {}
    for path in files:
        recorded = read_provenance(path.parent)
        for row in read_captions(path).rows:
            row = dict(row)
            row["id"] = str(row["id"])
            h = row.get("config_hash") or (recorded or {}).get("hash")
            if h is not None:
                hashes.setdefault(str(h), []).append(str(path))
            key = (row["id"], "" if row.get("method") is None else str(row["method"]))
            if key in merged:
                if merged[key]["caption"] != row["caption"]:
                    raise RecordsError(
                        f"conflicting captions for id {key[0]!r}"
                        f"{f' (method {key[1]!r})' if key[1] else ''}: "
                        f"{merged[key]['caption']!r} in {origin[key]} vs {row['caption']!r} "
                        f"in {path}")
                continue
            merged[key] = row
            origin[key] = path
    if len(hashes) > 1:
        where = "; ".join(f"{h}: {sorted(set(ps))[0]}" for h, ps in sorted(hashes.items()))
        raise ProvenanceError(f"shards were made with different settings (config hashes {where}); "
                              "merge only shards of one sweep with identical settings")
    ordered = [merged[k] for k in sorted(merged, key=lambda k: (id_sort_key(k[0]), k[1]))]
    write_jsonl(out, ordered)
    if len(hashes) == 1:
        first = read_provenance(files[0].parent)
        if first is not None:
            write_provenance(Path(out).parent, first)
    return ordered


def write_provenance(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """``captions_config.json``: ``{hash, fields, mixed?, previous?}`` of a caption folder."""
    return write_json(Path(folder) / PROVENANCE_NAME, record)


def stamp_captions(path: str | Path, config_hash: str) -> None:
    """Give every line of a captions file that has none the ``config_hash`` it was made with
    (before a folder starts mixing settings under ``resume=force``)."""
    rows = read_jsonl(path)
    write_jsonl(path, [{**r, "config_hash": r.get("config_hash", config_hash)} for r in rows])


def write_metrics(folder: str | Path, metrics: Mapping[str, Any],
                  per_caption: Sequence[Mapping[str, Any]]) -> tuple[Path, Path]:
    """``metrics.json`` (sorted keys, indent 2, no NaN) and ``per_caption.jsonl`` of a scoring."""
    out = Path(folder)
    return (write_json(out / METRICS_NAME, metrics, allow_nan=False),
            write_jsonl(out / PER_CAPTION_NAME, per_caption, allow_nan=False))


def read_provenance(folder: str | Path) -> dict[str, Any] | None:
    """The ``captions_config.json`` of a folder (``{hash, fields, mixed?}``), or None."""
    p = Path(folder) / PROVENANCE_NAME
    if not p.exists():
        return None
    fix = "it is written by the caption stage: restore it, or use a new run folder"
    data = parse_json(read_user_text(p, "provenance record", fix, ProvenanceError), p,
                      "provenance record", fix, ProvenanceError)
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------
# run_info.json


def write_run_info(folder: str | Path, info: Mapping[str, Any],
                   drop: tuple[str, ...] = ()) -> Path:
    """``run_info.json``: ``{experiment, config_hash, stage?, method?, dataset?, ...}``, the
    labels ``stage=table`` and the sweep summary read. Updates keep the earlier keys, except
    those in ``drop``."""
    path = Path(folder) / RUN_INFO_NAME
    current = read_run_info(path) if path.is_file() else {}
    kept = {k: v for k, v in current.items() if k not in drop}
    return write_json(path, {**kept, **info})


def read_run_info(path: str | Path) -> dict[str, Any]:
    """A ``run_info.json`` (a file, or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / RUN_INFO_NAME
    fix = "it is written by every run: restore it, or move that run folder out of the way"
    data = parse_json(read_user_text(p, "run record", fix), p, "run record", fix)
    if not isinstance(data, dict):
        raise RecordsError(f"{p}: run_info.json must be a JSON object, got {type(data).__name__}")
    return data
