"""The machinery's imports run one way: the layer order written in docs/design.md, one layer per
folder of the package (or top-level module), checked on the source. A module imports only from its
own folder or the layers below; there is no cycle; an
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


def modules(root: Path = REPO / "mnemoscope", folders: dict[str, Path] = FOLDERS) -> dict[str, Path]:
    """Module name as imported (mnemoscope.x, mnemoscope.sub.x, mnemoscope.architectures.y) -> file,
    for every .py file in every subfolder of the package (a subpackage's __init__ as the package)."""
    found = {}
    for base, folder in [("mnemoscope", root), *((f"mnemoscope.{pkg}", f) for pkg, f in folders.items())]:
        for p in sorted(folder.rglob("*.py")):
            parts = p.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            if parts:  # the package's own __init__ is the public API, checked by the contract tests
                found[".".join((base, *parts))] = p
    return found


def layer_of(module: str, order: list[str]) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "mnemoscope":
        return None
    return order.index(parts[1]) if parts[1] in order else None


def imports(module: str, path: Path):
    """(imported module, line, inside a function?) for every import of the mnemoscope package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
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


def imports_against(order: list[str], found: dict[str, Path]) -> list[str]:
    against = []
    for module, path in found.items():
        mine = layer_of(module, order)
        for target, line, _ in imports(module, path):
            theirs = layer_of(target, order)
            if theirs is not None and mine is not None and theirs > mine:
                against.append(f"{path}:{line} imports {target} ({order[theirs]} is above {order[mine]})")
    return against


def test_no_import_against_the_layer_order():
    against = imports_against(layer_order(), modules())
    assert not against, "\n".join(against)


def test_no_import_cycle():
    """Modules of one layer may import each other, but never in a circle."""
    found = modules()
    graph = {}  # module -> the modules it imports (`from .x import name` names module x)
    for m, p in found.items():
        targets = {target if target in found else target.rpartition(".")[0] for target, _, _ in imports(m, p)}
        graph[m] = {t for t in targets if t in found and t != m}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_layer_check_reads_every_subfolder(tmp_path):
    """A file two folders down is found, named as imported, and an import of it or from it
    against the order is seen, whether written relative or absolute."""
    pkg = tmp_path / "mnemoscope"
    for rel, text in {"__init__.py": "", "errors.py": "",
                      "low/__init__.py": "from .deep.a import A\n",
                      "low/deep/__init__.py": "", "low/deep/a.py": "from ...high.b import B\nA = 1\n",
                      "low/c.py": "from mnemoscope.high import b\nfrom .. import errors\n",
                      "high/__init__.py": "", "high/b.py": "from ..low.deep.a import A\nB = 2\n",
                      "cli.py": "from .high.b import B\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    found = modules(pkg, {})
    assert set(found) == {"mnemoscope.errors", "mnemoscope.low", "mnemoscope.low.deep", "mnemoscope.low.deep.a",
                          "mnemoscope.low.c", "mnemoscope.high", "mnemoscope.high.b", "mnemoscope.cli"}
    against = imports_against(["errors", "low", "high", "cli"], found)
    assert sorted(a.split(" imports ")[1].split(" (")[0] for a in against) == ["mnemoscope.high", "mnemoscope.high.b.B"]
    assert sorted(a.split(":")[0].split("mnemoscope/")[1] for a in against) == ["low/c.py", "low/deep/a.py"]
    reverse = imports_against(["errors", "high", "low", "cli"], found)
    assert [a.split(":")[0].split("mnemoscope/")[1] for a in reverse] == ["high/b.py"]

def test_imports_inside_functions_only_for_optional_dependencies():
    inner = [f"{path.relative_to(REPO)}:{line} {target}" for module, path in modules().items()
             for target, line, nested in imports(module, path) if nested and target.split(".")[0] not in OPTIONAL]
    assert not inner, "\n".join(inner)


def test_no_machinery_module_much_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "mnemoscope").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 520}
    assert not long, long


def test_design_md_draws_every_file_of_the_package():
    """docs/design.md's tree of the package names every file, each in its folder, and nothing else."""
    text = (REPO / "docs" / "design.md").read_text()
    block = text.split("## The package", 1)[1].split("```")[1]
    drawn, folder = set(), ""
    for line in block.strip("\n").splitlines()[1:]:  # after the line "mnemoscope/"
        name = line.split()[0] if line.strip() else ""
        if line.startswith("    ") and not line.startswith("        "):
            folder = name if name.endswith("/") else ""
            drawn.add(name.rstrip("/") + ("/__init__.py" if name.endswith("/") else ""))
        elif name:
            drawn.add(folder + name)
    files = {str(p.relative_to(REPO / "mnemoscope")) for p in (REPO / "mnemoscope").rglob("*.py")}
    assert drawn == files, f"not drawn: {sorted(files - drawn)}; drawn but absent: {sorted(drawn - files)}"
