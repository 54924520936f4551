"""The ConfigStore registration and the one conversion point, ``convert``.

Composition (Hydra) checks structure: ``conf/config.yaml`` names ``fuse_schema`` (the root
``FuseConfig``) first in its defaults list, and every model yaml names its backend's schema, so a
misspelled key in a yaml file or a wrong type fails while composing, naming the key and the file.
``convert`` checks values: it turns a composed group node into its dataclass once (running the
``__post_init__`` validation) and re-checks keys, since Hydra's ``+key=value`` overrides bypass the
struct flag. Every failure is a ``ConfigError`` with one line naming the key, its group and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import types
import typing
from typing import Any, TypeVar

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from fuse_repro.config.model import MODEL_SCHEMAS, ModelConfig
from fuse_repro.config.root import FuseConfig
from fuse_repro.errors import ConfigError, closest, use_one_of

T = TypeVar("T")

ROOT_SCHEMA = "fuse_schema"


def register_schemas() -> None:
    """Store the root schema and the model schemas (idempotent; run on import of the package)."""
    cs = ConfigStore.instance()
    cs.store(name=ROOT_SCHEMA, node=FuseConfig)
    for name, schema in MODEL_SCHEMAS.items():
        cs.store(group="schema/model", name=name, node=schema)


def _full_key(node: Any) -> str:
    if isinstance(node, (DictConfig, ListConfig)):
        try:
            return str(node._get_full_key(None))
        except Exception:  # noqa: BLE001 - a detached node has no key
            return ""
    return ""


def _join(where: str, key: Any) -> str:
    """``where.key`` unless ``key`` is already the absolute path (nodes attached to a root)."""
    key = str(key or "")
    if not where or key == where or key.startswith(where + "."):
        return key or where
    return f"{where}.{key}" if key else where


def _group_of(where: str, schema: type | None) -> str:
    """The config group a node belongs to: ``model`` for any model node, else the first part of
    its path, else (a detached node) the root field whose schema holds ``schema``."""
    if schema is not None and issubclass(schema, ModelConfig):
        return "model"
    if where:
        return where.split(".")[0]
    return _schema_groups().get(schema, "root") if schema is not None else "root"


@functools.cache
def _schema_groups() -> dict[type, str]:
    """Schema class -> the root group it sits under (``CorpusConfig`` -> ``adapter``)."""
    out: dict[type, str] = {}

    def walk(schema: Any, group: str) -> None:
        if not dataclasses.is_dataclass(schema) or schema in out:
            return
        out[schema] = group
        for hint in typing.get_type_hints(schema).values():
            for arg in (hint, *typing.get_args(hint)):
                walk(arg, group)

    for name, hint in typing.get_type_hints(FuseConfig).items():
        walk(hint, name)
    return out


def _check_keys(node: Any, where: str) -> None:
    """ConfigError for a key its schema does not have, at any depth (``+key=`` overrides and
    Python-built nodes are not checked by Hydra's struct flag)."""
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if isinstance(child, (DictConfig, ListConfig)):
                _check_keys(child, f"{where}[{i}]")
        return
    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
        return
    schema = OmegaConf.get_type(node)
    if schema is not None and dataclasses.is_dataclass(schema):
        names = {f.name for f in dataclasses.fields(schema)}
        for key in node:
            if key not in names:
                full = f"{where}.{key}" if where else str(key)
                raise ConfigError(
                    f"unknown key {full} in config group {_group_of(where, schema)} (schema "
                    f"{schema.__name__}); {_known_keys_fix(full, sorted(names))}"
                )
    for key in node:
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            _check_keys(child, f"{where}.{key}" if where else str(key))


def _known_keys_fix(key: str, known: list[str]) -> str:
    """The fix of an unknown key: the known key closest to it, and every known key."""
    parent, _, leaf = str(key).rpartition(".")
    close = closest(leaf, known)
    use = f"use {parent + '.' if parent else ''}{close}" if close else "use one of its keys"
    return f"{use} (known keys: {', '.join(known)})"


def _bare(hint: Any) -> Any:
    """``X`` of ``X | None`` (``Optional[X]``); any other hint as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _structured(schema: Any, plain: Any) -> Any:
    """The structured node of ``schema`` for the plain mapping ``plain`` (a saved config read
    back), with every model node typed by its backend's schema and every mapping of schemas
    (``objective.terms``) given its entries, as composition types them (the yaml files name
    their model schema), so that merging ``plain`` into it checks what composition checks."""
    if dataclasses.is_dataclass(schema) and issubclass(schema, ModelConfig) \
            and isinstance(plain, dict):
        schema = model_schema(plain)
    node = OmegaConf.structured(schema)
    if not isinstance(plain, dict):
        return node
    hints = typing.get_type_hints(schema)
    with open_dict(node):
        for f in dataclasses.fields(schema):
            value, hint = plain.get(f.name), _bare(hints[f.name])
            if not isinstance(value, dict):
                continue
            if dataclasses.is_dataclass(hint):
                node[f.name] = _structured(hint, value)
            elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(
                    _bare(typing.get_args(hint)[1])):
                entry = _bare(typing.get_args(hint)[1])
                node[f.name] = {k: _structured(entry, v) for k, v in value.items()}
    return node


def convert(node: Any, schema: type[T] | None = None) -> T:
    """The dataclass of a config node, validated: how ``validate`` builds the typed root, and
    how a Python caller (a saved config, a benchmark, a test) builds one group.

    ``node`` is a group of the composed config (``cfg.search``: already typed by the root schema)
    or a plain mapping / untyped node with ``schema`` given (a saved config, a test; its model
    nodes are typed by their backend's schema, as composition types them). Raises
    ``ConfigError`` (one line) for an unknown key, a missing required value, a wrong type or a
    value its ``__post_init__`` rejects.
    """
    where = _full_key(node)
    try:
        if not isinstance(node, DictConfig):
            node = OmegaConf.create(node if node is not None else {})
        node_type = OmegaConf.get_type(node)
        if schema is not None and not (
            isinstance(node_type, type) and issubclass(node_type, schema)
        ):
            plain = OmegaConf.to_container(node, resolve=True)
            if schema is ModelConfig:
                schema = model_schema(plain)  # type: ignore[assignment]
            node = OmegaConf.merge(_structured(schema, plain), plain)
        _check_keys(node, where)
        result = OmegaConf.to_object(node)
    except ConfigError:
        raise
    except ConfigKeyError as err:  # merging a plain mapping that has a key the schema lacks
        key = _join(where, getattr(err, "full_key", None))
        owner = getattr(err, "object_type", None) or schema
        name = getattr(owner, "__name__", str(owner))
        known = sorted(f.name for f in dataclasses.fields(owner)) if dataclasses.is_dataclass(owner) else []
        raise ConfigError(
            f"unknown key {key} in config group {_group_of(where, schema)} (schema {name}); "
            f"{_known_keys_fix(key, known)}"
        ) from err
    except MissingMandatoryValue as err:
        key = _join(where, getattr(err, "full_key", None))
        raise ConfigError(
            f"config value {key} is required (???) but not set; give it in the yaml or as "
            f"{key}=<value>"
        ) from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"config {where or 'root'}: {_omegaconf_message(err)}") from err
    except ValueError as err:  # a __post_init__ check that is not a ConfigError yet
        raise ConfigError(" ".join(str(err).split())) from err
    if schema is not None and not isinstance(result, schema):
        raise ConfigError(
            f"config {where or 'root'} is a {type(result).__name__}, expected {schema.__name__}"
        )
    return result  # type: ignore[return-value]


def validate(cfg: DictConfig, output_dir: str | None = None) -> FuseConfig:
    """The whole run config as its root dataclass: every group converted and checked once.

    The entry point calls it once, before anything loads, and hands the result to the stage
    (``app.run_stage``). An unknown key anywhere
    (``+scoring.foo=1`` included), a missing value or a rejected value is one ``ConfigError``.
    Outside a Hydra run (tests, notebooks) ``paths.output_dir`` cannot resolve; give
    ``output_dir`` to stand in for it. The ``hydra`` node, when present, is not checked. A run
    folder's ``config_resolved.yaml`` read back (``OmegaConf.load``) validates to the run's own
    typed config.
    """
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.pop("hydra", None)
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
    return convert(cfg, FuseConfig)


def model_schema(plain: Any) -> type[ModelConfig]:
    """The schema of a plain model mapping, chosen by its backend (for configs built in Python
    or read back from a run folder, which carry no schema of their own)."""
    backend = plain.get("backend") if isinstance(plain, dict) else None
    for schema in MODEL_SCHEMAS.values():
        if backend in schema.BACKENDS:
            return schema
    known = sorted(b for s in MODEL_SCHEMAS.values() for b in s.BACKENDS)
    raise ConfigError(f"model backend={backend!r} is not one of {known}; "
                      f"{use_one_of('backend', known, backend)} (the model's yaml names it)")


def _omegaconf_message(err: OmegaConfBaseException) -> str:
    """OmegaConf's first line plus the full key it names (its message spans several lines)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    full_key = getattr(err, "full_key", None)
    return f"{first} (key {full_key})" if full_key else first


_KEY_NOT_IN = re.compile(r"Key '([^']+)' not in '([^']+)'")
_FULL_KEY = re.compile(r"full_key:\s*(\S+)")
_IN_FILE = re.compile(r"In '([^']+)'")


def _schema_at(path: str) -> type | None:
    """The dataclass typing ``path`` (``search``, ``objective.terms.clip``) under the root schema."""
    schema: Any = FuseConfig
    parts = [p for p in path.split(".") if p]
    i = 0
    while i < len(parts):
        if not dataclasses.is_dataclass(schema):
            return None
        hint = typing.get_type_hints(schema).get(parts[i])
        i += 1
        while hint is not None and typing.get_origin(hint) is typing.Union:  # Optional[X]
            hint = next((a for a in typing.get_args(hint) if a is not type(None)), None)
        if typing.get_origin(hint) in (dict, dict):  # Dict[str, X]: skip the key
            hint = typing.get_args(hint)[1]
            i += 1
        schema = hint
    return schema if dataclasses.is_dataclass(schema) else None


def _unknown_key_line(key: str, schema_name: str, source: str) -> str:
    parent, _, leaf = key.rpartition(".")
    by_name = {cls.__name__: cls for cls in MODEL_SCHEMAS.values()}
    schema = by_name.get(schema_name) or _schema_at(parent)
    known = f"; {_known_keys_fix(key, sorted(f.name for f in dataclasses.fields(schema)))}" \
        if schema is not None else ""
    group = _group_of(parent, schema)
    return (f"unknown key {key}{source} in config group {group} (schema {schema_name} has no "
            f"'{leaf}'){known}")


_QUOTE_HINT = ("quote the value for Hydra inside shell quotes, e.g. "
               "\"dataset.annotations='/data/my files/résumé.json'\"")


def _quoting_line(text: str) -> str | None:
    """One line for an override Hydra's grammar could not read: characters it does not take
    unquoted (spaces, non-ASCII letters), or a value the shell split at a space."""
    first = text.strip()
    lexer = re.match(r"LexerNoViableAltException: (.*?)\s*\^", first, re.S)
    if lexer:
        return (f"cannot read the override {lexer.group(1).strip()!r}: a value with spaces or "
                f"non-ASCII characters must be quoted; {_QUOTE_HINT}")
    split = re.match(r"Error parsing override '(.*?)'\s*missing EQUAL", first, re.S)
    if split:
        return (f"override {split.group(1)!r} has no '=': a value with a space was split by the "
                f"shell; {_QUOTE_HINT}")
    return None


def _nullable_nodes() -> frozenset[str]:
    """Names of the model fields that are a mapping or a schema, null by default (``tokenizer``,
    ``architecture``): the command line cannot fill them (Hydra merges an override into the
    null node, which OmegaConf cannot do), only a config file can."""
    names = set()
    for schema in MODEL_SCHEMAS.values():
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            inner = _bare(hints[f.name])
            if inner is hints[f.name]:
                continue  # not ``X | None``
            if f.default is None and ((typing.get_origin(inner) or inner) is dict
                                      or dataclasses.is_dataclass(inner)):
                names.add(f.name)
    return frozenset(names)


def null_node_line(key: str) -> str:
    """One line for an override that sets a config node null by default (or a key inside it),
    which the command line cannot do: where to set it instead."""
    parent, _, leaf = key.rpartition(".")
    if parent in ("source", "target") or parent.endswith(".model"):
        fix = (f"copy the model's conf/model/<model>.yaml to conf/model/<new>.yaml, set "
               f"'{leaf}:' there and select it with model@{parent}=<new>")
    else:
        fix = f"set {key} in a config file (e.g. an experiment yaml) instead"
    return (f"{key} is null in this config, and an override cannot set a null node or a key "
            f"inside it (Hydra cannot merge into null); {fix}")


def _null_node_override(overrides: typing.Sequence[str]) -> str | None:
    """The node (``target.tokenizer``) of the first override that sets a key inside a model
    field that is null by default (``target.tokenizer.source=hf``)."""
    nullable = _nullable_nodes()
    for arg in overrides:
        parts = arg.lstrip("+~").split("=", 1)[0].split(".")
        for i, part in enumerate(parts[:-1]):
            if part in nullable and i > 0:
                return ".".join(parts[: i + 1])
    return None


def _yaml_line(err: yaml.YAMLError) -> str:
    """One line for a config file that is not valid YAML: the file, where, what, and the fix."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = (f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark
             else "a config file")
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    return f"{where}: not valid YAML ({problem}); fix that file"


def _option_fix(line: str, options: list[str], overrides: typing.Sequence[str]) -> str:
    """``use <group>=<option>`` for a group option Hydra could not find (``Could not find
    'model/nope'``), keyed as the command line selected it (``model@source``)."""
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", line)
    if missing is None:
        return use_one_of("<group>", options)
    group, name = missing.groups()
    key = next((a.split("=", 1)[0].lstrip("+~") for a in overrides
                if "=" in a and a.split("=", 1)[1] == name
                and a.split("=", 1)[0].lstrip("+~").split("@")[0] == group), group)
    return use_one_of(key, options, name)


def compose_error_line(err: BaseException, overrides: typing.Sequence[str] = ()) -> str:
    """One line for a Hydra composition error (a key its schema lacks, a wrong type, a missing
    option, a mapping given to a node that is null): what is wrong, where, and the fix. For the
    entry point's ``error:`` line; ``overrides`` (the command line) name the override where the
    error does not."""
    if isinstance(err, yaml.YAMLError):
        return _yaml_line(err)
    chain = []
    cur: BaseException | None = err
    while cur is not None and len(chain) < 5:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    texts = [str(e) for e in chain]
    text = "\n".join(texts)
    where = _IN_FILE.search(text)
    source = f" (in conf/{where.group(1)}.yaml)" if where and where.group(1) != "config" else ""
    quoting = _quoting_line(texts[0])
    if quoting is not None:
        return quoting
    missing = _KEY_NOT_IN.search(text)
    if missing:
        full = _FULL_KEY.search(text)
        key = full.group(1) if full else missing.group(1)
        return _unknown_key_line(key, missing.group(2), source)
    if "Error merging override" in texts[0] and len(chain) > 1:
        override = texts[0].replace("Error merging override", "").strip()
        cause = texts[1].strip().splitlines()[0]
        return f"bad override {override}: {cause}"
    full = _FULL_KEY.search(text)
    if full and "'NoneType' object has no attribute" in text:  # a mapping merged into null
        return null_node_line(full.group(1))
    if "Unexpected type for root: NoneType" in text:  # Hydra asserts on `a.b=1` when a is null
        node = _null_node_override(overrides)
        if node is not None:
            return null_node_line(node)
        return ("an override sets a key inside a config node that is null here, which the "
                "command line cannot do; set that node in a config file (for a model: a copy "
                "of its conf/model/<model>.yaml, selected with model@<source|target>=<copy>)")
    lines = [line.strip() for line in texts[0].strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("In '") and "Could not find" in lines[0]:
        options = [ln for ln in lines[2:] if not ln.startswith(("Config search path", "provider="))]
        return f"{lines[0]}; available: {', '.join(options)}; " + _option_fix(lines[0], options,
                                                                              overrides)
    return " ".join(lines) if lines else type(err).__name__
