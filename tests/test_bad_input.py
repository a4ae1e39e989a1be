"""Bad input: each case is one `study.py` call that must end in exactly one line on stderr, a non-zero
exit, and an existing study folder whose files are byte-identical afterwards."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mnemoscope.cli import main
from test_faults import TINY, make_corpus, make_plugins, snapshot

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished tiny study, its corpus, test plugins and malformed files, made once."""
    root = tmp_path_factory.mktemp("bad_input")
    mp = pytest.MonkeyPatch()
    mp.setenv("MNEMOSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    corpus = make_corpus(root / "texts")
    w = {"root": root, "corpus": corpus, "plugins": make_plugins(root / "plugins"), "study": root / "study"}
    w["base"] = ["--task", f"text:{corpus}", "--out", str(w["study"]), *TINY]
    assert main(["--arch", "lstm", *w["base"]]) == 0
    files = {
        "bad.yaml": "archs: [lstm\ntasks: - text\n  params: : :\n",
        "list.yaml": "- lstm\n- cnn\n",
        "unknown_key.yaml": "archs: [lstm]\nlearning_rate: 0.1\n",
        "hparams.yaml": f"archs: [lstm]\ntasks: ['text:{corpus}']\nparams: [2k]\ncontext: 16\ntokens: 2k\n"
                        f"batch_size: 8\neval_sequences: 8\nhparams: {{lstm: {{learnin_rate: 0.1}}}}\n",
        "syntax_error.py": "class Broken(:\n    pass\n",
        "empty.txt": "",
        "binary.txt": b"\x00\x01\x02\xff" * 500,
    }
    for name, content in files.items():
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("not a folder")
    # a copy of the study with a corrupt results table, for `report`
    corrupt = root / "corrupt"
    corrupt.mkdir()
    for p in w["study"].iterdir():
        if p.is_file():
            (corrupt / p.name).write_bytes(p.read_bytes())
    (corrupt / "runs.parquet").write_bytes(b"PAR1 this is not a parquet file")
    w["corrupt"] = corrupt
    yield w
    mp.undo()


def P(w, cls):  # a test plugin
    return f"{w['plugins']}:{cls}"


# (id, argv builder, what the one line must say)
CASES = [
    ("unknown_arch", lambda w: ["--arch", "transformr", *w["base"]], r"unknown architecture 'transformr'; did you mean transformer"),
    ("unknown_task", lambda w: ["--arch", "lstm", *w["base"], "--task", "txet"], r"unknown task 'txet'"),
    ("malformed_params", lambda w: ["--arch", "lstm", *w["base"], "--params", "12q"], r"malformed parameter count '12q'"),
    ("zero_params", lambda w: ["--arch", "lstm", *w["base"], "--params", "0"], r"parameter count must be at least 1"),
    ("negative_params", lambda w: ["--arch", "lstm", *w["base"], "--params=-5k"], r"parameter count must be positive, got '-5k'"),
    ("params_beyond_memory", lambda w: ["--arch", "transformer", *w["base"], "--params", "1e99"],
     r"--params 1e\+99: .* more than the .* GiB here; the largest that could fit has about [\d.]+[kMG]? parameters"),
    ("zero_tokens", lambda w: ["--arch", "lstm", *w["base"], "--tokens", "0"], r"token budget must be at least 1"),
    ("negative_tokens", lambda w: ["--arch", "lstm", *w["base"], "--tokens=-1k"], r"token budget"),
    ("negative_tokens_spaced", lambda w: ["--arch", "lstm", *w["base"], "--tokens", "-5"], r"token budget must be positive, got '-5'"),
    ("zero_batch", lambda w: ["--arch", "lstm", *w["base"], "--batch-size", "0"], r"batch size must be at least 1"),
    ("context_1", lambda w: ["--arch", "lstm", *w["base"], "--context", "1"], r"context length must be at least 2"),
    ("context_longer_than_data", lambda w: ["--arch", "lstm", *w["base"], "--context", "100000", "--tokens", "200k"],
     r"fewer than one sequence of context 100000"),
    ("context_beyond_token_budget", lambda w: ["--arch", "lstm", *w["base"], "--context", "100000"],
     r"--context 100000 .* more tokens than the whole budget, --tokens 2k"),
    ("negative_seed", lambda w: ["--arch", "lstm", *w["base"], "--seeds=-1"], r"seeds must be non-negative"),
    ("seed_not_int", lambda w: ["--arch", "lstm", *w["base"], "--seeds", "one"], r"not an integer: 'one'"),
    ("zero_eval_sequences", lambda w: ["--arch", "lstm", *w["base"], "--eval-sequences", "0"], r"eval_sequences must be at least 1"),
    ("params_unreachable", lambda w: ["--arch", "lstm", *w["base"], "--params", "3"], r"lstm|parameters"),
    ("corrupt_yaml", lambda w: ["--config", str(w["root"] / "bad.yaml"), "--out", str(w["study"])],
     r"corrupt YAML in .*bad.yaml: line 2, column 6: expected ',' or ']'"),
    ("yaml_not_mapping", lambda w: ["--config", str(w["root"] / "list.yaml"), "--out", str(w["study"])], r"not a YAML mapping"),
    ("yaml_unknown_key", lambda w: ["--config", str(w["root"] / "unknown_key.yaml"), "--out", str(w["study"])],
     r"unknown config key\(s\) learning_rate"),
    ("yaml_bad_hparam", lambda w: ["--config", str(w["root"] / "hparams.yaml"), "--out", str(w["study"]), "--no-progress"],
     r"unknown hyperparameter\(s\) for lstm: learnin_rate"),
    ("missing_config", lambda w: ["--config", str(w["root"] / "nope.yaml")], r"no such config file"),
    ("corrupt_table_report", lambda w: ["report", str(w["corrupt"])], r"corrupt table .*runs.parquet"),
    ("report_missing_dir", lambda w: ["report", str(w["root"] / "nowhere")], r"no study folder"),
    ("plugin_raises_in_constructor", lambda w: ["--arch", P(w, "RaisesInInit"), *w["base"]], r"broken constructor"),
    ("plugin_raises_in_forward", lambda w: ["--arch", P(w, "RaisesInForward"), *w["base"]], r"failed in forward: ValueError: broken forward"),
    ("plugin_wrong_shape", lambda w: ["--arch", P(w, "WrongShape"), *w["base"]], r"returned \(2, 15, 256\) .* expected \(2, 16, 256\)"),
    ("plugin_not_causal", lambda w: ["--arch", P(w, "NotCausal"), *w["base"]], r"is not causal"),
    ("plugin_keeps_state", lambda w: ["--arch", P(w, "KeepsState"), *w["base"]],
     r"KeepsState keeps state between calls: the same input twice gave different outputs"),
    ("plugin_nan_output", lambda w: ["--arch", P(w, "NaNOutput"), *w["base"]], r"NaN or inf logits"),
    ("plugin_file_missing", lambda w: ["--arch", str(w["root"] / "nope.py") + ":X", *w["base"]], r"file not found"),
    ("plugin_syntax_error", lambda w: ["--arch", str(w["root"] / "syntax_error.py") + ":Broken", *w["base"]],
     r"failed to import: SyntaxError"),
    ("plugin_class_missing", lambda w: ["--arch", P(w, "Nope"), *w["base"]], r"has no attribute 'Nope'"),
    ("empty_text_file", lambda w: ["--arch", "lstm", *w["base"], "--task", f"text:{w['root'] / 'empty.txt'}"], r"is empty"),
    ("binary_text_file", lambda w: ["--arch", "lstm", *w["base"], "--task", f"text:{w['root'] / 'binary.txt'}"], r"looks binary"),
    ("empty_text_folder", lambda w: ["--arch", "lstm", *w["base"], "--task", f"text:{w['root'] / 'empty_dir'}"], r"no files found"),
    ("missing_text_path", lambda w: ["--arch", "lstm", *w["base"], "--task", f"text:{w['root'] / 'nowhere'}"], r"no such file or folder"),
    ("path_then_options", lambda w: ["--arch", "lstm", *w["base"], "--task", f"text:{w['root']},bpe=300"],
     r"name the path as one: text:source=.*,bpe=300"),
    ("malformed_arch_option", lambda w: ["--arch", "transformer:=3", *w["base"]], r"malformed option"),
    ("storage_not_a_url", lambda w: ["--arch", "lstm", *w["base"], "--storage", "my-database"], r"malformed storage URL 'my-database'"),
    ("storage_unknown_scheme", lambda w: ["--arch", "lstm", *w["base"], "--storage", "mongodb://host/db"], r"unsupported storage URL"),
    ("storage_no_server", lambda w: ["--arch", "lstm", *w["base"], "--storage", "postgresql://u:secret@127.0.0.1:9/db"],
     r"cannot open storage postgresql://u:\*\*\*@127.0.0.1:9/db"),
    ("storage_memory_sqlite", lambda w: ["--arch", "lstm", *w["base"], "--storage", "sqlite:///:memory:"], r"names no database file"),
    ("negative_workers", lambda w: ["--arch", "lstm", *w["base"], "--workers=-2"], r"--workers must be 0 or more"),
    ("zero_heartbeat", lambda w: ["--arch", "lstm", *w["base"], "--heartbeat", "0"], r"--heartbeat must be at least 1"),
    ("bad_devices", lambda w: ["--arch", "lstm", *w["base"], "--devices", "many"], r"malformed --devices 'many'"),
    ("zero_nodes", lambda w: ["--arch", "lstm", *w["base"], "--num-nodes", "0"], r"malformed --num-nodes '0'"),
    ("unknown_strategy", lambda w: ["--arch", "lstm", *w["base"], "--strategy", "ddq"], r"unknown --strategy 'ddq'"),
    ("devices_with_workers", lambda w: ["--arch", "lstm", *w["base"], "--devices", "2", "--workers", "2"], r"drop --workers"),
    ("worker_no_study", lambda w: ["worker", str(w["root"] / "nowhere")], r"no study at"),
    ("worker_no_queue_in_storage", lambda w: ["worker", str(w["study"]), "--storage", f"sqlite:///{w['root'] / 'other.db'}"],
     r"holds no study named"),
    ("unwritable_out", lambda w: ["--arch", "lstm", *w["base"], "--out", str(w["root"] / "a_file" / "study")], r"cannot write"),
    ("different_study_same_folder", lambda w: ["--arch", "transformer", *w["base"]], r"holds a different study"),
    ("unknown_flag", lambda w: ["--archs", "lstm", *w["base"]], r"unrecognized arguments|ambiguous|expected"),
    ("unknown_command", lambda w: ["frobnicate"], r"unknown command 'frobnicate'"),
]


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(world, name, argv, expected, capfd):
    args = argv(world)
    before = snapshot(world["study"]), snapshot(world["corrupt"])
    capfd.readouterr()
    code = main(args)
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code != 0
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and re.search(expected, err[0]), err[0]
    assert "Traceback" not in err[0]
    assert (snapshot(world["study"]), snapshot(world["corrupt"])) == before


def test_bad_input_count():
    """The issue asks for at least 25 malformed inputs."""
    assert len(CASES) >= 25


def test_bad_input_in_a_real_process(world):
    """The same through the real entry point: one line, exit 2, no traceback."""
    proc = subprocess.run([sys.executable, str(REPO / "study.py"), "--arch", "lstm", *world["base"], "--params", "-3"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
