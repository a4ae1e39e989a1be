"""Functions of a readable size: none over 80 lines in the package (every subfolder) or in
benchmarks/, unless its docstring says why ("Long because ...")."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIMIT = 80
REASON = "Long because"


def long_functions(path: Path, source: str | None = None) -> list[str]:
    """``file:line name (N lines)`` for each function (or method, or nested function) over LIMIT
    lines, its decorators and docstring counted, whose docstring does not say why."""
    tree = ast.parse(source if source is not None else path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            n = node.end_lineno - first + 1
            if n > LIMIT and REASON not in (ast.get_docstring(node) or ""):
                out.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_over_80_lines():
    files = sorted([*(REPO / "mnemoscope").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")])
    assert len(files) > 40
    long = [f for path in files for f in long_functions(path)]
    assert not long, "functions over 80 lines (split them, or say in the docstring 'Long because ...'):\n" + \
        "\n".join(long)


def test_the_check_sees_a_long_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(LIMIT))
    nested = "class A:\n    def f(self):\n        def g():\n" + body.replace("    x", "            x") + "        return g\n"
    assert [f.split(" ", 1)[1] for f in long_functions(Path("a.py"), nested)] == [f"f ({LIMIT + 3} lines)",
                                                                                    f"g ({LIMIT + 1} lines)"]
    short = "def f():\n" + "".join(f"    x{i} = {i}\n" for i in range(LIMIT - 1))
    assert not long_functions(Path("a.py"), short)
    said = 'def f():\n    """Long because it is one table."""\n' + body
    assert not long_functions(Path("a.py"), said)
    assert long_functions(Path("a.py"), said.replace(REASON, "Short"))
