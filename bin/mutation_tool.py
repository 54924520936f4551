"""Helpers of ``bin/mutation`` (run inside a target's scratch copy, with mutmut importable).

    python mutation_tool.py generate <sample> <seed> <glob>...   write patterns, message, all
    python mutation_tool.py recheck                              names not killed yet
    python mutation_tool.py report <work> <target>...            the per-target table

Mutants are split in two classes by where the planted change sits in the mutated function
(found by comparing its syntax tree with the original's):

- **message** mutants change only text shown to a person: inside a ``raise`` statement, the
  arguments of an exception constructor (a call to a name ending in ``Error``, ``Exception``
  or ``Warning``), a logging call (``log.* / logger.* / logging.*``), ``warnings.warn``,
  ``print`` or an ``assert``'s message, or an argument of a call to a function of the same
  module whose parameter is read only in such places (``_vector(values, "true loss")``), or the
  value of a local variable read only in such places (``fix = "..."``), or anywhere inside a
  **message function**: one whose every use in the package is a call that sits in such a place,
  or in such a local's value, or inside another message function (``compose_error_line`` and its
  helpers: their whole result is the text after ``error:``), and that assigns no attribute or
  item and declares nothing global. A test that pins the text kills them by construction, so
  they are counted apart and not run;
- **logic** mutants are everything else. They are run with message matching switched off
  (``FUSE_MUTATION_LOGIC=1``, see ``tests/conftest.py``): ``pytest.raises(match=...)`` checks
  the exception type only, ``assert_one_line`` checks exit code and shape but not its needles,
  and tests marked ``pins_message`` are deselected. So a logic mutant counts as killed only when
  a test fails on something other than message text.

``generate`` samples ``<sample>`` logic mutants per target (0: all) with ``random.Random(seed)``
over the sorted names, so a run is reproducible and its cost bounded.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import random
import sys
from collections import Counter
from pathlib import Path

KILLED = ("killed", "segfault")
_LOG_OWNERS = {"log", "logger", "logging", "warnings", "_log", "LOG"}
_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical"}


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _is_message_context(node: ast.AST, child_field: str | None) -> bool:
    if isinstance(node, ast.Raise):
        return True
    if isinstance(node, ast.Assert):
        return child_field == "msg"
    if isinstance(node, ast.Call) and child_field in ("args", "keywords"):
        name = _call_name(node)
        if name == "print" or name.endswith(("Error", "Exception", "Warning")):
            return True
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr in _LOG_METHODS
                and isinstance(func.value, ast.Name) and func.value.id in _LOG_OWNERS):
            return True
    return False


def _change_path(a: ast.AST, b: ast.AST, path: list) -> list | None:
    """The (node, field, index) chain from ``b``'s root to the first place ``a`` and ``b``
    differ (``index`` is the position in a list field, else None)."""
    if type(a) is not type(b):
        return path
    for name, va in ast.iter_fields(a):
        vb = getattr(b, name, None)
        if isinstance(va, ast.AST) and isinstance(vb, ast.AST):
            if ast.dump(va) != ast.dump(vb):
                return _change_path(va, vb, [*path, (b, name, None)])
        elif isinstance(va, list) and isinstance(vb, list):
            for i, (x, y) in enumerate(zip(va, vb)):
                if isinstance(x, ast.AST) and isinstance(y, ast.AST):
                    if ast.dump(x) != ast.dump(y):
                        return _change_path(x, y, [*path, (b, name, i)])
                elif x != y:
                    return [*path, (b, name, i)]
            if len(va) != len(vb):
                return [*path, (b, name, min(len(va), len(vb)))]
        elif va != vb:
            return [*path, (b, name, None)]
    return None


def _parents(tree: ast.AST) -> dict[ast.AST, tuple[ast.AST, str]]:
    """Every node of ``tree`` -> (its parent, the parent's field that holds it)."""
    parents: dict[ast.AST, tuple[ast.AST, str]] = {}
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    parents[child] = (parent, field)
    return parents


def _in_message(node: ast.AST, func: ast.AST) -> bool:
    """Is ``node`` (inside ``func``) within a message context?"""
    parents = _parents(func)
    while node in parents:
        parent, field = parents[node]
        if _is_message_context(parent, field):
            return True
        node = parent
    return False


def message_params(func: ast.FunctionDef) -> set[str]:
    """Parameters of ``func`` read only inside message contexts (a name used in error text),
    directly or through a local read only there (``shown = f"{name} entry"``)."""
    names = [a.arg for a in func.args.posonlyargs + func.args.args + func.args.kwonlyargs]
    out = set()
    for name in names:
        loads = [n for n in ast.walk(func) if isinstance(n, ast.Name) and n.id == name
                 and isinstance(n.ctx, ast.Load)]
        if loads and all(_in_message(n, func) or _in_message_local(n, func) for n in loads):
            out.add(name)
    return out


def _in_message_local(node: ast.AST, func: ast.AST) -> bool:
    """Is ``node`` inside the value of ``local = ...`` where ``local`` is read only inside
    message contexts of ``func``?"""
    for stmt in ast.walk(func):
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and any(n is node for n in ast.walk(stmt.value))):
            name = stmt.targets[0].id
            loads = [n for n in ast.walk(func) if isinstance(n, ast.Name) and n.id == name
                     and isinstance(n.ctx, ast.Load)]
            return bool(loads) and all(_in_message(n, func) for n in loads)
    return False


def _message_local(path: list, func: ast.AST) -> bool:
    """Does the change sit in the value of ``name = ...`` where ``name`` is read only inside
    message contexts of ``func`` (``fix = "..."`` later put into an error)?"""
    for node, field, _ in path:
        if (isinstance(node, ast.Assign) and field == "value" and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            name = node.targets[0].id
            loads = [n for n in ast.walk(func) if isinstance(n, ast.Name) and n.id == name
                     and isinstance(n.ctx, ast.Load)]
            if loads and all(_in_message(n, func) for n in loads):
                return True
    return False


def _message_argument(path: list, funcs: dict[str, ast.FunctionDef]) -> bool:
    """Does the change sit in an argument that the called module function only puts into
    messages (``_vector(values, "true loss")`` where ``name`` is only used in its errors)?"""
    for node, field, index in path:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        callee = funcs.get(f"x_{node.func.id}__mutmut_orig") or funcs.get(node.func.id)
        if callee is None:
            continue
        params = [a.arg for a in callee.args.posonlyargs + callee.args.args]
        if field == "args" and index is not None and index < len(params):
            param = params[index]
        elif field == "keywords" and index is not None and index < len(node.keywords):
            param = node.keywords[index].arg
        else:
            continue
        if param in message_params(callee):
            return True
    return False


def _plain_name(name: str) -> str:
    """A function's own name from mutmut's mangled one (``x_f__mutmut_orig`` -> ``f``,
    ``xǁCǁm__mutmut_orig`` -> ``m``)."""
    name = name.removesuffix("__mutmut_orig")
    if name.startswith("xǁ"):
        return name.rsplit("ǁ", 1)[-1]
    return name[2:] if name.startswith("x_") else name


def _without_side_effects(func: ast.AST) -> bool:
    """No attribute or item assignment and no ``global``/``nonlocal`` in ``func``: its only
    effect is what it returns."""
    for n in ast.walk(func):
        if isinstance(n, (ast.Global, ast.Nonlocal)):
            return False
        targets = (n.targets if isinstance(n, ast.Assign)
                   else [n.target] if isinstance(n, (ast.AugAssign, ast.AnnAssign)) else [])
        if any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in targets):
            return False
    return True


def _read_only_in_messages(name: str, func: ast.AST) -> bool:
    loads = [n for n in ast.walk(func) if isinstance(n, ast.Name) and n.id == name
             and isinstance(n.ctx, ast.Load)]
    return bool(loads) and all(_in_message(n, func) for n in loads)


def message_functions(folder: Path) -> set[str]:
    """Plain names of the mutated files' functions whose result only ever reaches messages
    (module docstring), found over every ``.py`` of the scratch copy's package (``mutants/``):
    the originals of mutated functions and every function of the files left as they are."""
    units: list[ast.AST] = []  # the code whose calls count: functions and module bodies
    candidates: dict[str, ast.AST] = {}
    for src in sorted((folder / "mutants").rglob("*.py")):
        if "tests" in src.relative_to(folder / "mutants").parts:
            continue  # the package's own uses, not the tests'
        tree = ast.parse(src.read_text(encoding="utf-8"))
        mutated = src.with_name(src.name + ".meta").exists()
        body = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                             ast.ClassDef))]
        units.append(ast.Module(body=body, type_ignores=[]))
        for n in ast.walk(tree):
            if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if mutated and "__mutmut_" in n.name and not n.name.endswith("__mutmut_orig"):
                continue  # a mutant's body, not the code as written
            if mutated and n.name.endswith("__mutmut_orig"):
                candidates[_plain_name(n.name)] = n
            if not (mutated and "__mutmut_" not in n.name and any(
                    isinstance(c, ast.Name) and "__mutmut_" in c.id for c in ast.walk(n))):
                units.append(n)  # (a trampoline only forwards to the mutants)
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, func in candidates.items():
            if name in found or not _without_side_effects(func):
                continue
            uses, ok = 0, True
            for unit in units:
                enclosing = _plain_name(getattr(unit, "name", ""))
                for n in ast.walk(unit):
                    ref = (n.id if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                           else n.attr if isinstance(n, ast.Attribute) else None)
                    if ref != name or unit is func:
                        continue
                    uses += 1
                    if enclosing in found and enclosing != name:
                        continue
                    if not _call_in_message(n, unit):
                        ok = False
                        break
                if not ok:
                    break
            if ok and uses:
                found.add(name)
                changed = True
    return found


def _call_in_message(ref: ast.AST, unit: ast.AST) -> bool:
    """Is the name ``ref`` called, and does the call sit in a message context of ``unit`` or in
    the value of a local read only in message contexts?"""
    parents = _parents(unit)
    call, field = parents.get(ref, (None, None))
    if not (isinstance(call, ast.Call) and field == "func"):
        return False  # passed around as a value: its result may go anywhere
    if _in_message(call, unit):
        return True
    node = call
    while node in parents:
        parent, field = parents[node]
        if (isinstance(parent, ast.Assign) and field == "value" and len(parent.targets) == 1
                and isinstance(parent.targets[0], ast.Name)):
            return _read_only_in_messages(parent.targets[0].id, unit)
        if isinstance(parent, ast.stmt):
            return False
        node = parent
    return False


def classify(mutants_file: Path, others: dict[str, ast.FunctionDef] | None = None,
             messages: set[str] | None = None) -> dict[str, str]:
    """``{mutant function name: "message" | "logic"}`` for one mutated source file; ``others``:
    the original functions of the target's other files (a helper imported from a sibling);
    ``messages``: the plain names of the message functions (``message_functions``)."""
    tree = ast.parse(mutants_file.read_text(encoding="utf-8"))
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    funcs = {**(others or {}), **funcs}
    out = {}
    for name, node in funcs.items():
        if "__mutmut_" not in name or name.endswith("__mutmut_orig"):
            continue
        orig = funcs.get(name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
        if _plain_name(name.rsplit("__mutmut_", 1)[0]) in (messages or set()):
            out[name] = "message"
            continue
        if orig is None:
            out[name] = "logic"
            continue
        a = ast.Module(body=orig.body, type_ignores=[])
        b = ast.Module(body=node.body, type_ignores=[])
        path = _change_path(a, b, [])
        if path is None:  # a change in the signature (a default value): logic
            out[name] = "logic"
            continue
        message = (any(_is_message_context(n, f) for n, f, _ in path)
                   or _message_argument(path, funcs) or _message_local(path, b))
        out[name] = "message" if message else "logic"
    return out


def _meta_results(folder: Path = Path(".")) -> dict[str, int | None]:
    results: dict[str, int | None] = {}
    for meta in (folder / "mutants").rglob("*.py.meta"):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def _split(folder: Path, globs: list[str]) -> tuple[list[str], list[str]]:
    """The target's (logic, message) mutant names, sorted."""
    kinds: dict[str, str] = {}
    sources = [meta.with_suffix("") for meta in (folder / "mutants").rglob("*.py.meta")]
    originals: dict[str, ast.FunctionDef] = {}
    for src in sources:  # the original of every mutated function, for calls across files
        for n in ast.walk(ast.parse(src.read_text(encoding="utf-8"))):
            if isinstance(n, ast.FunctionDef) and n.name.endswith("__mutmut_orig"):
                originals[n.name] = n
    messages = message_functions(folder)
    for src in sources:  # mutants/fuse_repro/x.py
        module = ".".join(src.relative_to(folder / "mutants").with_suffix("").parts)
        for func, kind in classify(src, originals, messages).items():
            kinds[f"{module}.{func}"] = kind
    names = sorted(k for k in _meta_results(folder) if any(fnmatch.fnmatch(k, g) for g in globs))
    missing = [n for n in names if n not in kinds]
    assert not missing, f"unclassified mutants: {missing[:5]}"
    return [n for n in names if kinds[n] == "logic"], [n for n in names if kinds[n] == "message"]


def generate(sample: int, seed: int, globs: list[str]) -> None:
    logic, message = _split(Path("."), globs)
    chosen = sorted(random.Random(seed).sample(logic, sample)) if 0 < sample < len(logic) else logic
    Path("globs").write_text("\n".join(globs) + "\n")
    Path("patterns").write_text("\n".join(chosen) + "\n")
    Path("message").write_text("\n".join(message) + "\n")
    Path("all_logic").write_text("\n".join(logic) + "\n")


def recheck() -> None:
    from mutmut.stats import status_by_exit_code

    results = _meta_results()
    for name in Path("patterns").read_text().split():
        code = results.get(name)
        if code is None or status_by_exit_code[code] not in KILLED:
            print(name)


def report(work: Path, targets: list[str]) -> None:
    from mutmut.stats import status_by_exit_code

    total: Counter = Counter()
    survivors = []
    print("mutation score of logic mutants (logic: the mutants in the module; run: those sampled "
          "and decided; "
          "t/o: stopped at the CPU-time limit, undecided and left out of the score; message "
          "mutants are counted apart, not run):")
    print(f"  {'target':<17} {'logic':>5} {'run':>4} {'killed':>6} {'t/o':>4} {'surv':>4}"
          f" {'score':>6} {'message':>7}  seconds")
    for target in targets:
        folder = work / target
        # Classified again now (the classifier may have learnt since the run): a sampled mutant
        # now known to be a message mutant leaves the score.
        logic, message = _split(folder, (folder / "globs").read_text().split())
        chosen = [n for n in (folder / "patterns").read_text().split() if n in set(logic)]
        n_logic, n_message = len(logic), len(message)
        results = _meta_results(folder)
        status: Counter = Counter()
        for name in chosen:
            code = results.get(name)
            s = "not checked" if code is None else status_by_exit_code[code]
            s = "killed" if s in ("killed", "segfault") else s
            status[s] += 1
            if s != "killed":
                survivors.append(f"{target}: {s}: {name}")
        total += status
        # A mutant stopped at its CPU-time limit is undecided, not killed: a test module whose
        # model fixtures load again in every mutant's process runs past the limit that mutmut
        # derives from the shared-fixture timings. Such mutants leave the score.
        timeouts = status["timeout"]
        tried = sum(status.values()) - timeouts
        rest = ", ".join(f"{v} {k}" for k, v in sorted(status.items())
                         if k not in ("killed", "survived", "timeout"))
        seconds = (folder / "seconds").read_text().strip() if (folder / "seconds").exists() else "?"
        print(f"  {target:<17} {n_logic:5d} {tried:4d} {status['killed']:6d} {timeouts:4d}"
              f" {status['survived']:4d} {100 * status['killed'] / max(tried, 1):5.1f}%"
              f" {n_message:7d}  {seconds}"
              + (f"  ({rest})" if rest else ""))
    tried = sum(total.values()) - total["timeout"]
    print(f"  {'all':<17} {'':5} {tried:4d} {total['killed']:6d} {'':4} {total['survived']:4d}"
          f" {100 * total['killed'] / max(tried, 1):5.1f}%")
    if survivors:
        print(f"not killed ({len(survivors)}):")
        print("\n".join("  " + s for s in survivors))


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "generate":
        generate(int(rest[0]), int(rest[1]), rest[2:])
    elif cmd == "recheck":
        recheck()
    elif cmd == "report":
        report(Path(rest[0]), rest[1:])
    else:
        raise SystemExit(f"unknown command {cmd!r}")
