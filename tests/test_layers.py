"""The machinery's imports run one way: the layer order written in docs/design.md, checked on
the source. A module imports only from its own layer or the ones below; there is no cycle; an
import inside a function is only for an optional dependency; no module is much over 500 lines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# where each layer's modules live: mnemoscope/<name>.py, or the built-ins' folders
FOLDERS = {"architectures": REPO / "architectures", "tasks": REPO / "tasks"}
OPTIONAL = {"sklearn", "mathematics_dataset", "transformers", "tokenizers", "mlflow"}  # extras: imported where they are used, with a comment


def layer_order() -> list[str]:
    text = (REPO / "docs" / "design.md").read_text()
    line = next(m.group(0) for m in re.finditer(r"^`?errors ->.*$", text, re.M))
    return [name.strip(" `") for name in line.split("->")]


def modules() -> dict[str, Path]:
    """Module name as imported (mnemoscope.x, mnemoscope.architectures.y) -> file."""
    found = {f"mnemoscope.{p.stem}": p for p in (REPO / "mnemoscope").glob("*.py") if p.stem != "__init__"}
    for pkg, folder in FOLDERS.items():
        found.update({f"mnemoscope.{pkg}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"})
    return found


def layer_of(module: str, order: list[str]) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "mnemoscope":
        return None
    return order.index(parts[1]) if parts[1] in order else None


def imports(module: str, path: Path):
    """(imported module, line, inside a function?) for every import of the mnemoscope package."""
    package = module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield (f"{base}.{alias.name}" if not node.module or node.level else base), node.lineno, id(node) in nested
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in nested


def test_layer_order_is_written_and_covers_every_module():
    order = layer_order()
    assert order[0] == "errors" and order[-1] == "cli"
    missing = sorted(m for m in modules() if layer_of(m, order) is None)
    assert not missing, f"modules with no layer in docs/design.md: {missing}"


def test_no_import_against_the_layer_order():
    order = layer_order()
    against = []
    for module, path in modules().items():
        mine = layer_of(module, order)
        for target, line, _ in imports(module, path):
            theirs = layer_of(target, order)
            if theirs is not None and theirs > mine:
                against.append(f"{path.relative_to(REPO)}:{line} imports {target} ({order[theirs]} is above {order[mine]})")
    assert not against, "\n".join(against)


def test_imports_inside_functions_only_for_optional_dependencies():
    inner = [f"{path.relative_to(REPO)}:{line} {target}" for module, path in modules().items()
             for target, line, nested in imports(module, path) if nested and target.split(".")[0] not in OPTIONAL]
    assert not inner, "\n".join(inner)


def test_no_machinery_module_much_over_500_lines():
    long = {p.name: n for p in (REPO / "mnemoscope").glob("*.py") if (n := len(p.read_text().splitlines())) > 520}
    assert not long, long
