"""Every default is written once, in mnemoscope/settings.py (or TrainConfig, for the training
hyperparameters): the command line, its --help, the config file and the report's prose take it
from there. The scan below reads the source and fails on a second copy of a default: a literal
argparse default, a "default N" written in a help text, a public function's (or dataclass's)
keyword default or a fallback (``x if ... else N``, ``.get(key, N)``) equal to the setting of the
same name, a keyword default that disagrees with the setting of its name (a second default under
another value), and a named constant's value written as a literal number in the report's prose.
The scan reads every subfolder of the package, the built-ins, study.py and benchmarks/ (whose own
flags keep their defaults, but whose help texts about the default study take its numbers)."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from mnemoscope import settings
from mnemoscope.measure.bootstrap import LEVEL
from mnemoscope.cli import main, run_parser
from mnemoscope.study.config import StudyConfig
from mnemoscope.settings import ANALYSIS, EXECUTION, SCORE, STUDY, TUNE, VALIDATION_WINDOWS
from mnemoscope.training.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent


def sources(repo: Path = REPO) -> list[Path]:
    """Every .py file of the package (in every subfolder), the built-ins and the command line."""
    return sorted([*(repo / "mnemoscope").rglob("*.py"), repo / "study.py", *(repo / "tasks").rglob("*.py"),
                   *(repo / "architectures").rglob("*.py"), *(repo / "benchmarks").rglob("*.py")])


def is_report(path: Path) -> bool:
    """A module that writes the report's prose: report*.py, anything in a report/ folder, the probes' views."""
    return path.name.startswith("report") or "report" in path.parent.parts[-1:] or path.name == "probe_views.py"


SOURCES = sources()
GROUPS = (settings.StudySettings, settings.ExecutionSettings, settings.TuneSettings, settings.AnalysisSettings,
          settings.ScoreSettings, TrainConfig)
# names a setting also goes by as a function's parameter
ALIASES = {"n_targets": {"targets"}, "targets": {"n_targets"}, "sequences": {"n_sequences"},
           "extrapolation_sequences": {"n_sequences"}, "trials": {"n_trials"}}
TRIVIAL = {0, 1}  # too common to be a copy of anything


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def literal_number(node):
    """The number a literal expression writes (``200``, ``1 << 16``, ``-0.5``, ``2 ** 10``), else None."""
    if isinstance(node, ast.Constant):
        return node.value if number(node.value) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = literal_number(node.operand)
        return None if v is None else -v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.LShift, ast.Pow, ast.Mult)):
        a, b = literal_number(node.left), literal_number(node.right)
        if a is None or b is None:
            return None
        return a << b if isinstance(node.op, ast.LShift) else a ** b if isinstance(node.op, ast.Pow) else a * b
    return None


def setting_defaults() -> dict[str, set]:
    """name -> the numeric defaults the settings give it (under its own name and its aliases)."""
    out: dict[str, set] = {}
    for cls in GROUPS:
        for f in dataclasses.fields(cls):
            value = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if number(v) and v not in TRIVIAL:
                    for name in {f.name, *ALIASES.get(f.name, ())}:
                        out.setdefault(name, set()).add(v)
    shared = {"level": LEVEL, "n_sequences": settings.VALIDATION_WINDOWS, "batch_size": settings.EVAL_BATCH,
              "n_boot": settings.N_BOOT, "tolerance": settings.TOLERANCE}  # the numbers named once, by parameter
    for name, value in shared.items():
        out.setdefault(name, set()).add(value)
    return out


def package_of(path: Path, repo: Path = REPO) -> str:
    """The package a file's relative imports start from (mnemoscope/report/page.py: mnemoscope.report.page)."""
    parts = path.relative_to(repo).with_suffix("").parts
    parts = ("mnemoscope", *parts) if parts[0] in ("architectures", "tasks") else parts
    return ".".join(parts[:-1])


def imported_module(node: ast.ImportFrom, package: str):
    """The module a `from X import ...` reads, relative ones resolved against ``package``."""
    if node.level:
        return importlib.import_module("." * node.level + (node.module or ""), package)
    return importlib.import_module(node.module) if node.module.startswith("mnemoscope") else None


def prose_constants(tree, package: str = "mnemoscope") -> dict[float, str]:
    """value -> name of the numbers a report module's prose must take from a name: every constant
    it imports, the interval level (as a percentage) and every setting's default of 10 or more."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            module = imported_module(node, package)
            for alias in node.names if module else ():
                value = getattr(module, alias.name, None)
                if alias.name.isupper() and number(value):
                    out.setdefault(float(value), f"{node.module}.{alias.name}")
    out.setdefault(float(LEVEL), "bootstrap.LEVEL")
    for name, value in vars(settings).items():
        if name.isupper() and number(value):
            out.setdefault(float(value), f"settings.{name}")
    for cls in GROUPS[:-1]:
        for f in dataclasses.fields(cls):
            if number(f.default):
                out.setdefault(float(f.default), f"settings.{cls.__name__}.{f.name}")
    return {v: n for v, n in out.items() if v >= 10 or v != int(v)}  # not the 2 of "T/2", the 4 of "1, 2, 4"


def docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def literal_texts(node):
    """The literal pieces of a string expression (a constant, an f-string, a sum of them)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub


def copies_in(path: Path, source: str | None = None, repo: Path = REPO) -> list[str]:
    """Every second copy of a default in one file (``source``: its text, else read)."""
    tree = ast.parse(source if source is not None else path.read_text())
    defaults, found = setting_defaults(), []
    values = {v for vs in defaults.values() for v in vs}
    bench = "benchmarks" in path.relative_to(repo).parts[:1]
    where = lambda node, what: f"{path.relative_to(repo)}:{node.lineno}: {what}"  # noqa: E731
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and bench:
            # the benchmarks' own flags keep their own defaults, but a help text that speaks of the
            # default study takes its numbers from the settings
            for kw in node.keywords:
                for text in literal_texts(kw.value) if kw.arg == "help" else ():
                    if "default study" in text.value and re.search(r"(?<![\w.%])\d+(?:\.\d+)?[kM]?\b", text.value):
                        found.append(where(node, "a help text about the default study writes a number"))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            for kw in node.keywords:
                if kw.arg == "default" and isinstance(kw.value, ast.Constant) and kw.value.value is not None:
                    found.append(where(node, f"argparse default {kw.value.value!r} written here"))
                if kw.arg == "help":
                    for text in literal_texts(kw.value):
                        for m in re.finditer(r"\bdefault:?\s+(\d[\d.]*[kKMG]?)\b", text.value):
                            found.append(where(node, f"help text writes 'default {m.group(1)}'"))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                not node.name.startswith("_") or node.name == "__init__"):
            a = node.args
            pairs = [*zip(a.args[len(a.args) - len(a.defaults):], a.defaults), *zip(a.kwonlyargs, a.kw_defaults)]
            for arg, default in pairs:
                value = literal_number(default) if default is not None else None
                if value is None or value in TRIVIAL or arg.arg not in defaults:
                    continue
                if value in defaults[arg.arg]:
                    found.append(where(default, f"{node.name}({arg.arg}={value!r}): a setting's default"))
                else:  # a second default that disagrees with the setting of that name
                    found.append(where(default, f"{node.name}({arg.arg}={value!r}): the setting of that name says "
                                                f"{', '.join(map(str, sorted(defaults[arg.arg])))}"))
        fallback = (node.orelse, node.body) if isinstance(node, ast.IfExp) else (
            (node.args[1], node.args[0]) if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get"
            and len(node.args) == 2 else None)  # `row["tolerance"] if ... else 0.01`, `d.get("tolerance", 0.01)`
        if fallback and isinstance(fallback[0], ast.Constant) and number(fallback[0].value):
            keys = {n.value for n in ast.walk(fallback[1]) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            if any(fallback[0].value in defaults.get(k, ()) for k in keys):
                found.append(where(node, f"a fallback {fallback[0].value!r} for {', '.join(sorted(keys))}: a setting's default"))
        if isinstance(node, ast.ClassDef) and path.name != "settings.py":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and \
                        isinstance(item.value, ast.Constant) and number(item.value.value) and \
                        item.value.value in defaults.get(item.target.id, ()) and \
                        not (path.name == "train.py" and node.name == "TrainConfig"):
                    found.append(where(item, f"{node.name}.{item.target.id} = {item.value.value!r}: a setting's default"))
    if is_report(path):
        constants, skip = prose_constants(tree, package_of(path, repo)), docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                for m in re.finditer(r"(?<![\w.\-/=#])(\d+(?:\.\d+)?(?:e-?\d+)?)(?!\w|\.\d)", node.value):
                    name = constants.get(float(m.group(1)))
                    percent = node.value[m.end():m.end() + 1] == "%"  # a share (10% of the bytes) or the level
                    if name and percent == (name == "bootstrap.LEVEL"):
                        found.append(where(node, f"prose writes {m.group(1)}, the value of {name}"))
    return found


# Second defaults in files another branch is editing now (issue 30: analysis, scaling), left for it to
# take from the settings; each must still be there (the test fails once one is fixed: drop it here).
KNOWN: dict[str, list[str]] = {}  # copies not fixed yet (path -> what the scan reports); none now


def known(line: str) -> bool:
    path, _, what = line.split(":", 2)
    return any(k in what for k in KNOWN.get(path, ()))


def test_no_default_is_written_twice():
    found = [line for path in SOURCES for line in copies_in(path)]
    new = [line for line in found if not known(line)]
    assert not new, "defaults written a second time (take them from mnemoscope.settings):\n" + "\n".join(new)
    stale = [f"{path}: {k}" for path, ks in KNOWN.items() for k in ks
             if not any(line.startswith(path + ":") and k in line for line in found)]
    assert not stale, "fixed (drop them from KNOWN):\n" + "\n".join(stale)


def test_the_scan_reads_every_subfolder(tmp_path):
    """A file two folders down is scanned, and a report module in a report/ folder has its prose
    read, its relative imports resolved from where it lies."""
    deep = tmp_path / "mnemoscope" / "study" / "deep" / "tune_more.py"
    page = tmp_path / "mnemoscope" / "report" / "page.py"
    for path in (deep, page, tmp_path / "study.py"):
        path.parent.mkdir(parents=True, exist_ok=True)
    deep.write_text(f"def tune(trials: int = {TUNE.trials}):\n    pass\n")
    page.write_text('from ..settings import N_BOOT\nTEXT = f"{N_BOOT} resamples"\n')
    (tmp_path / "study.py").write_text("")
    assert deep in sources(tmp_path) and page in sources(tmp_path)
    assert copies_in(deep, repo=tmp_path) == [
        f"mnemoscope/study/deep/tune_more.py:1: tune(trials={TUNE.trials}): a setting's default"]
    assert not copies_in(page, repo=tmp_path)
    written = page.read_text().replace('f"{N_BOOT} resamples"', f'"{settings.N_BOOT} resamples"')
    assert copies_in(page, written, repo=tmp_path)


@pytest.mark.parametrize("path, old, new", [
    # each a copy as it once stood in the code: the scan must see it
    ("mnemoscope/cli.py", 'add_arguments(p, ScoreSettings, "batch_size")',
     'p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")'),
    ("mnemoscope/cli.py", 'add_arguments(p, ScoreSettings, "batch_size")',
     'p.add_argument("--batch-size", type=int, help="windows per forward pass (default 8)")'),
    ("mnemoscope/study/tune.py", "trials: int = TUNE.trials", "trials: int = 30"),
    ("mnemoscope/measure/ablation.py", "tolerance: float = TOLERANCE,", "tolerance: float = 0.01,"),
    ("mnemoscope/training/callbacks.py", "n_sequences: int = VALIDATION_WINDOWS", "n_sequences: int = 64"),
    ("mnemoscope/measure/ablation.py", "level: float = LEVEL)", "level: float = 95)"),
    ("mnemoscope/report/findings.py", 'if "tolerance" in f else TOLERANCE', 'if "tolerance" in f else 0.01'),
    ("mnemoscope/report/context_use.py", "{N_STARTS} starts", "27 starts"),
    # a default that disagrees with the setting of its name (ablation's 512 targets, 1 << 16 tokens)
    ("mnemoscope/measure/ablation.py", "n_targets: int = ANALYSIS.n_targets", "n_targets: int = 512"),
    ("mnemoscope/measure/ablation.py", "max_tokens: int = ABLATION_TOKENS", "max_tokens: int = 1 << 15"),
    ("mnemoscope/measure/statistics.py", "n_boot: int = ANALYSIS.fit_boot", "n_boot: int = 200"),
    ("benchmarks/common.py", "level: float = LEVEL", "level: float = 95"),
    ("benchmarks/run.py", "{format_count(STUDY.tokens)}", "4M"),
])
def test_the_scan_sees_a_copy(path, old, new):
    source = (REPO / path).read_text()
    assert old in source
    assert not copies_in(REPO / path, source)
    assert copies_in(REPO / path, source.replace(old, new, 1))


def test_config_and_command_line_take_the_settings():
    assert dataclasses.asdict(StudyConfig()) == dataclasses.asdict(STUDY)
    args = run_parser().parse_args([])  # a flag left out is None, so that --config can fill it
    assert args.arch is None and args.history is None and args.heartbeat is None
    assert args.workers == EXECUTION.workers
    text = run_parser().format_help()
    assert f"(default {STUDY.eval_sequences})" in text and f"(default {EXECUTION.heartbeat})" in text


@pytest.mark.parametrize("command, shown", [
    ("tune", [f"(default {TUNE.trials})", "(default 100k)", "(default 1M)", f"(default {TUNE.out})"]),
    ("analyze", [f"(default {ANALYSIS.n_targets})", f"(default {ANALYSIS.tolerance})", "(default: truncate shuffle"]),
    ("score", [f"(default {SCORE.sequences})", f"(default {SCORE.batch_size})"]),
])
def test_help_shows_the_settings(command, shown, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for s in shown:
        assert s in text


def test_validation_windows_one_number():
    from mnemoscope.training.callbacks import LogSpacedValidation
    import inspect
    assert inspect.signature(LogSpacedValidation).parameters["n_sequences"].default == VALIDATION_WINDOWS
