"""End-to-end: a tiny study through the CLI, its files and columns, resuming, plugins from files."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from mnemoscope.cli import main
from mnemoscope.study.runner import POSITION_COLUMNS, RUN_COLUMNS

REPO = Path(__file__).resolve().parent.parent
TINY = ["--params", "8k", "--tokens", "6k", "--context", "32", "--eval-sequences", "8", "--batch-size", "8",
        "--no-progress", "--no-analysis"]


def test_study_smoke_files_columns_and_resume(text_dir, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--arch", "transformer", "lstm", "cnn", "--task", f"text:{text_dir}", "--out", str(out), *TINY]
    assert main(args) == 0
    for f in ("config.yaml", "environment.json", "runs.parquet", "per_position.parquet", "per_position.png", "report.html"):
        assert (out / f).stat().st_size > 0, f
    runs = pd.read_parquet(out / "runs.parquet")
    pp = pd.read_parquet(out / "per_position.parquet")
    assert list(runs.columns) == RUN_COLUMNS and list(pp.columns) == POSITION_COLUMNS
    assert sorted(runs["arch"]) == ["cnn", "lstm", "transformer"] and (runs["status"] == "ok").all()
    assert ((runs["achieved_params"] / runs["target_params"] - 1).abs() <= 0.10).all()
    assert len(pp) == 3 * 32 and set(pp["position"]) == set(range(32))
    assert (pp["ci_low"] <= pp["loss"]).all() and (pp["loss"] <= pp["ci_high"]).all() and (pp["n_sequences"] == 8).all()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "git_commit" in html and "torch" in html
    before = {p.name: (p / "result.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}

    # rerunning skips finished runs and never duplicates a row
    capsys.readouterr()
    assert main(args) == 0
    assert "3 already finished" in capsys.readouterr().out
    after = {p.name: (p / "result.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert before == after
    assert len(pd.read_parquet(out / "runs.parquet")) == 3

    # --config on the written config.yaml is the same study: nothing to do
    assert main(["--config", str(out / "config.yaml"), "--out", str(out), "--no-progress", "--no-analysis"]) == 0
    assert len(pd.read_parquet(out / "runs.parquet")) == 3

    # report rebuilds from the tables alone
    (out / "per_position.png").unlink()
    (out / "report.html").unlink()
    for run in (out / "runs").iterdir():
        (run / "model.pt").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "per_position.png").exists() and (out / "report.html").exists()


def test_different_study_in_same_folder_is_refused(text_dir, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), *TINY]) == 0
    table = (out / "runs.parquet").read_bytes()
    assert main(["--arch", "cnn", "--task", f"text:{text_dir}", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "different study" in err and "\n" not in err
    assert (out / "runs.parquet").read_bytes() == table


def test_a_study_extended_in_its_config_says_how_to_replan_and_keeps_its_runs(text_dir, tmp_path, capsys):
    """A user adds an architecture to a finished study's config.yaml: the folder's queue still holds
    the old plan, and the refusal names the file to delete; after that only the new run trains."""
    import yaml
    out = tmp_path / "s"
    assert main(["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), *TINY]) == 0
    lstm = sorted(p.name for p in (out / "runs").iterdir())
    weights = (out / "runs" / lstm[0] / "model.pt").read_bytes()
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["archs"] = ["lstm", "cnn"]
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    assert main(["--config", str(out / "config.yaml"), "--no-progress", "--no-analysis"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"delete {(out / 'queue.db').resolve()} and run again" in err
    (out / "queue.db").unlink()
    assert main(["--config", str(out / "config.yaml"), "--no-progress", "--no-analysis"]) == 0
    assert "2 runs, 1 already finished, 1 to run" in capsys.readouterr().out
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(runs["arch"]) == ["cnn", "lstm"]
    assert (out / "runs" / lstm[0] / "model.pt").read_bytes() == weights


def test_plugin_from_a_file_outside_the_repository(text_dir, tmp_path):
    """`--arch my_model.py:MyModel` runs in a study with no edit to the harness (a subprocess, as a user would)."""
    plugin_dir = tmp_path / "elsewhere"
    plugin_dir.mkdir()
    (plugin_dir / "my_model.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class MyModel(nn.Module):
            """A causal bag-of-previous-token model: no harness imports at all."""
            width_key = "width"

            def __init__(self, vocab_size, context_length, width=16):
                super().__init__()
                self.emb = nn.Embedding(vocab_size, width)
                self.mix = nn.Linear(2 * width, width)
                self.out = nn.Linear(width, vocab_size)

            def forward(self, x):
                e = self.emb(x)
                prev = torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], dim=1)
                return self.out(torch.tanh(self.mix(torch.cat([e, prev], -1))))
    '''))
    out = tmp_path / "plugin_study"
    cmd = [sys.executable, str(REPO / "study.py"), "--arch", "my_model.py:MyModel", "lstm", "--task",
           f"text:{text_dir}", "--out", str(out), *TINY, "--history", "0"]  # kept steps: test_growth.py
    proc = subprocess.run(cmd, cwd=plugin_dir, capture_output=True, text=True, timeout=900)  # a hang guard only
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs["arch"]) == {"my_model.py:MyModel", "lstm"}
    row = runs[runs["arch"] == "my_model.py:MyModel"].iloc[0]
    assert abs(row["achieved_params"] / 8000 - 1) <= 0.10
    assert pd.isna(row["state_size"])  # a plain nn.Module need not report it


@pytest.mark.parametrize("args,fragment", [
    (["--arch", "transfomer"], "did you mean transformer"),
    (["--params", "12q"], "malformed parameter count"),
    (["--tokens", "0"], "token budget must be at least 1"),
    (["--arch", "nowhere_module_abc:Net"], "failed to import"),
    (["frobnicate"], "unknown command"),
])
def test_bad_input_is_one_line(args, fragment, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "x"), "--no-progress"] if args[0] != "frobnicate" else args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_plugin_breaking_the_contract_fails_before_training(text_dir, tmp_path, capsys):
    bad = tmp_path / "bad_models.py"
    bad.write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class WrongShape(nn.Module):
            width_key = "width"
            def __init__(self, vocab_size, context_length, width=8):
                super().__init__()
                self.lin = nn.Linear(width, vocab_size)
                self.emb = nn.Embedding(vocab_size, width)
            def forward(self, x):
                return self.lin(self.emb(x))[:, :-1]

        class Peeks(nn.Module):
            width_key = "width"
            def __init__(self, vocab_size, context_length, width=8):
                super().__init__()
                self.emb = nn.Embedding(vocab_size, width)
                self.lin = nn.Linear(width, vocab_size)
            def forward(self, x):
                return self.lin(self.emb(x).flip(1).cumsum(1).flip(1))  # sums the future
    '''))
    out = tmp_path / "s"
    assert main(["--arch", "lstm", "--task", f"text:{text_dir}", "--out", str(out), *TINY]) == 0
    table = (out / "runs.parquet").read_bytes()
    for cls, fragment in (("WrongShape", "expected (2, 24, 256)"), ("Peeks", "not causal")):
        capsys.readouterr()
        code = main(["--arch", "lstm", f"{bad}:{cls}", "--task", f"text:{text_dir}", "--out", str(tmp_path / cls), *TINY])
        err = capsys.readouterr().err.strip()
        assert code == 2 and fragment in err and len(err.splitlines()) == 1
    assert (out / "runs.parquet").read_bytes() == table


def test_auto_batch_size_leaves_about_a_thousand_steps():
    from mnemoscope.study.config import StudyConfig
    from mnemoscope.study.runner import Study
    from mnemoscope.training.train import auto_batch_size

    assert auto_batch_size(1_000_000, 256) == 4  # 976 steps (at 32 it would be 122)
    assert auto_batch_size(10_000_000, 512) == 16  # 1220 steps
    assert auto_batch_size(5_000_000, 256) == 16
    assert auto_batch_size(10**9, 1024) == 32  # capped
    assert auto_batch_size(2_000, 16) == 4  # never below 4
    for b in (auto_batch_size(t, T) for t in (10**5, 10**6, 10**7, 10**8) for T in (64, 256, 784, 1024)):
        assert b in (4, 8, 16, 32)
    config = StudyConfig(tokens="2M", batch_size="auto").normalized()
    assert config.batch_size == "auto" and Study(config, Path("unused")).batch_size(256) == 4
    assert StudyConfig(batch_size="8").normalized().batch_size == 8


def test_fit_with_a_progress_bar_redraws_every_few_steps_and_still_logs(tiny_lstm, tmp_path, capfd):
    """The bar redraws every PROGRESS_REFRESH_STEPS steps (Lightning's default, every step, cost
    ~1 ms per step); Lightning's hook bookkeeping, stored directly on the module, still lets
    training_step log."""
    from mnemoscope.training.train import PROGRESS_REFRESH_STEPS, TrainConfig, fit

    model, splits = tiny_lstm
    cfg = TrainConfig(tokens=40 * 8 * 16, batch_size=8)  # 40 steps
    lm, trainer = fit(model, splits["train"], splits["validation"], 16, cfg, tmp_path / "logs", progress=True)
    assert trainer.progress_bar_callback.refresh_rate == PROGRESS_REFRESH_STEPS > 1
    assert trainer.global_step == 40
    bar = capfd.readouterr().out  # Lightning's tqdm writes to stdout
    assert "40/40" in bar  # the last step is always drawn
    assert bar.count("/40 [") <= 20  # 11 redraws here; at every step it would be over 80
    metrics = pd.read_csv(tmp_path / "logs" / "metrics.csv")
    assert metrics["train_loss"].notna().sum() >= 2  # self.log worked (log_every_n_steps = 2 here)
    assert "_current_fx_name" in vars(lm) and "_current_fx_name" not in {**lm._modules, **lm._parameters, **lm._buffers}


def test_a_rerun_holding_two_versions_of_a_run_names_them_in_every_table(text_dir, tmp_path):
    """A committed study rerun after the transformer changed holds the old run and the new one: every
    table (runs, per position, the analysis) names the old one as what it was, never both 'transformer'."""
    import shutil

    from mnemoscope.storage.run_folder import RunFolder

    out = tmp_path / "study"
    args = ["--arch", "transformer", "--task", f"text:{text_dir}", "--out", str(out), *TINY]
    assert main(args) == 0
    new = RunFolder(next((out / "runs").iterdir()))
    old = RunFolder(out / "runs" / (new.run_id[:-8] + "0ld0ld00"))
    shutil.copytree(new.path, old.path)
    row = old.row()
    row.pop("arch_version")  # trained before version 3 recorded it; its weights hold convolutions: version 2
    old.write_row({**row, "run_id": old.run_id})
    old.write_per_position(old.per_position().assign(run_id=old.run_id))
    assert main(["--config", str(out / "config.yaml"), "--no-progress", "--no-analysis"]) == 0
    assert main(["analyze", str(out), "--targets", "4", "--variants", "truncate"]) == 0
    want = {new.run_id: "transformer", old.run_id: "transformer:init=gpt2"}
    for table in ("runs.parquet", "per_position.parquet", "fits.csv", "context.parquet", "octaves.parquet"):
        df = pd.read_parquet(out / table) if table.endswith(".parquet") else pd.read_csv(out / table)
        assert dict(zip(df["run_id"], df["arch"])) == want, table
