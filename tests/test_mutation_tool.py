"""bin/mutation_tool.py's classifier: which mutants only change message text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("mutation_tool", REPO / "bin" / "mutation_tool.py")
assert spec is not None and spec.loader is not None
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

# a mutated file as mutmut writes it: the original of each function, a trampoline, mutants
MUTATED = '''
def x_line__mutmut_orig(err):
    return f"bad value {err}"
def line(err):
    return _mutmut_trampoline(x_line__mutmut_orig, x_line__mutmut_mutants, err)
def x_line__mutmut_1(err):
    return f"XXbad value {err}"
def x_part__mutmut_orig(x):
    return x + 1
def part(x):
    return _mutmut_trampoline(x_part__mutmut_orig, x_part__mutmut_mutants, x)
def x_noisy__mutmut_orig(err):
    STATE.last = err
    return str(err)
def noisy(err):
    return _mutmut_trampoline(x_noisy__mutmut_orig, x_noisy__mutmut_mutants, err)
def x_check__mutmut_orig(v):
    if v < 0:
        raise ValueError(line(v))
    return part(v)
'''
# a file left as written: the rest of the package
USER = '''
def run(v):
    try:
        check(v)
    except ValueError as err:
        text = line(err)
        raise SystemExit(f"error: {text}")
    print(noisy(v))
    return part(v) * 2
'''


def _folder(tmp_path: Path, user: str = USER) -> Path:
    pkg = tmp_path / "mutants" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text(MUTATED)
    (pkg / "a.py.meta").write_text("{}")
    (pkg / "b.py").write_text(user)
    tests = tmp_path / "mutants" / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text("def test_line():\n    assert line(1) == 'bad value 1'\n")
    return tmp_path


def test_message_functions_are_those_whose_result_only_reaches_messages(tmp_path):
    found = tool.message_functions(_folder(tmp_path))
    # line: raised, and a local read only in a raise; the tests' own use does not count.
    # part: its result is computed with. noisy: printed, but it writes state (a side effect).
    assert found == {"line"}


def test_one_use_outside_a_message_makes_it_logic(tmp_path):
    user = USER + "\ndef keep(v):\n    return len(line(v))\n"
    assert tool.message_functions(_folder(tmp_path, user)) == set()
    passed = USER + "\nHANDLERS = [line]\n"  # passed around as a value: may go anywhere
    assert tool.message_functions(_folder(tmp_path / "b", passed)) == set()


def test_classify_marks_every_mutant_of_a_message_function(tmp_path):
    folder = _folder(tmp_path)
    kinds = tool.classify(folder / "mutants" / "pkg" / "a.py", None, {"line"})
    assert kinds["x_line__mutmut_1"] == "message"
    assert tool.classify(folder / "mutants" / "pkg" / "a.py", None, set())["x_line__mutmut_1"] \
        == "logic"  # a returned f-string is not a message context by itself


def test_a_parameter_read_only_through_a_message_local_is_message_text():
    import ast

    func = ast.parse(
        "def check(name, value, allowed, in_list=False):\n"
        "    if value not in allowed:\n"
        "        shown = f'{name} entry' if in_list else name\n"
        "        raise ValueError(f'{shown}={value!r}')\n"
        "    return value\n").body[0]
    # value and allowed decide; in_list, like name, only shapes the text
    assert tool.message_params(func) == {"name", "in_list"}
