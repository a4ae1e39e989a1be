"""The benchmark runs end to end in its tiny mode and its table has every row.

No timing is asserted (a shared 2-core machine makes any speed threshold flaky); the ratios are
checked only for being measured (finite, positive) where a reference exists.
"""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
ARCHS = ["transformer", "lstm", "cnn"]


def test_tiny_benchmark_has_every_row(tmp_path):
    env = {**os.environ, "MNEMOSCOPE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    df = pd.read_csv(tmp_path / "benchmarks.csv")
    has_gpt2 = importlib.util.find_spec("transformers") is not None

    def section(name, arch=None):
        rows = df[df.section == name]
        return rows if arch is None else rows[rows.arch == arch]

    for arch in ARCHS:
        for name in ("train", "overhead"):  # 2 sizes x 2 contexts each
            rows = section(name, arch)
            assert len(rows) == 4, (name, arch)
            assert sorted(rows.groupby(["target_params", "context"]).size()) == [1, 1, 1, 1]
            assert (rows.value > 0).all()
            if name == "overhead" or arch != "transformer" or has_gpt2:
                assert (rows.ratio > 0).all() and np.isfinite(rows.ratio).all()
            else:  # the reference is optional: the row says it is missing instead of failing
                assert rows.reference.str.contains("not installed").all()
        ev = section("eval", arch)
        assert len(ev) == 1 and (ev.ratio > 0).all()
        assert len(section("truncation", arch)) == 1
        fl = section("flops", arch)
        assert len(fl) == 1
        if "not available" not in str(fl.detail.iloc[0]):  # mnemoscope.measure.flops counts the FLOPs
            assert 0 < fl.ratio.iloc[0] < np.inf and fl.value.iloc[0] > 0
    for arch in ARCHS:
        assert len(section("default shape", arch)) == 1
        assert len(section("noise", arch)) == 5  # an A/A row for every training cell
    assert len(section("module", "transformer")) == 4
    measured = df[df.ratio_low.notna()]
    assert len(measured) >= 30
    assert ((measured.ratio_low <= measured.ratio) & (measured.ratio <= measured.ratio_high)).all()
    targeted = df[df.target.notna() & (df.section != "truncation")]
    assert set(targeted.verdict) <= {"yes", "no", "within noise"} and len(targeted) >= 30
    fixed = section("fixed cost")
    assert len(fixed) == 1 and fixed.value.iloc[0] > 0 and fixed.reference_value.iloc[0] > 0
    assert sorted(section("harness variant").row.str.extract(r"\((.*)\)")[0]) == [
        "deterministic=False", "filling uninitialised memory", "no DivergenceGuard", "progress bar on"]
    peak = df[df.row.str.startswith("measured") & (df.section == "flops")]
    assert len(peak) == 1 and peak.value.iloc[0] > 0
    study = section("study")
    assert list(study.row) == ["default study wall time", "default study peak memory"]
    assert (study.value > 0).all()
    hf = section("hf")  # the Hugging Face families against the built-in transformer, where installed
    if has_gpt2:
        from mnemoscope.architectures.hf import FAMILIES

        assert sorted(hf.arch) == sorted([f"hf:{name}" for name in FAMILIES] + ["gru", "lstm", "ssm"])
        assert (hf.ratio > 0).all() and np.isfinite(hf.ratio).all() and (hf.value > 0).all()
        assert hf.reference.str.startswith("built-in transformer").all()
    else:
        assert len(hf) == 1 and "not installed" in hf.detail.iloc[0]
    output = section("output layer")  # per vocabulary: speed, the head's share, two peak memories
    assert sorted(output.row.str.extract(r"V=(\d+)$")[0].astype(int).unique()) == [256, 4096]
    for _, rows in output.groupby(output.row.str.extract(r"V=(\d+)$")[0]):
        assert len(rows) == 4
        speed = rows[rows.row.str.startswith("train step")]
        assert len(speed) == 1 and 0 < speed.ratio.iloc[0] < np.inf and speed.reference_value.iloc[0] > 0
        share = rows[rows.unit == "share"]
        assert len(share) == 1 and 0 < share.value.iloc[0] < 1.5
        memory = rows[rows.unit == "MiB"]
        assert len(memory) == 2 and (memory.value >= 0).all() and (memory.reference_value >= 0).all()
    table = (tmp_path / "benchmarks.md").read_text()
    assert "Regenerate: `python -m benchmarks.run --tiny" in table
    for name in df.row:
        assert name in table


def test_paired_ratio_and_verdict():
    """The statistics behind every ratio: per-round ratios, their median and a bootstrap interval."""
    from benchmarks.common import CLOCK, Rounds, paired_ratio, verdict

    CLOCK["index"] = 1
    rng = np.random.default_rng(0)
    ours = [np.array([1.0, t]) for t in rng.uniform(0.9, 1.1, 40)]
    slower = [np.array([1.0, 2 * o[1]]) for o in ours]  # the reference takes twice as long, round by round
    r, lo, hi, wall = paired_ratio(ours, slower)
    assert r == lo == hi == 2.0 and wall == 1.0
    noisy = [np.array([1.0, o[1] * f]) for o, f in zip(ours, rng.uniform(0.8, 1.2, 40))]
    r, lo, hi, _ = paired_ratio(ours, noisy)
    assert lo < r < hi and lo < 1.0 < hi and hi - lo < 0.2
    assert verdict(1.01, 1.05, 1.0) == (True, "yes")
    assert verdict(0.97, 1.02, 1.0) == (None, "within noise")
    assert verdict(0.90, 0.95, 1.0) == (False, "no")
    # rounds stop once every interval is narrow enough, never before the minimum
    policy = Rounds(min=5, max=100, seconds=1e9, precision=0.02)
    times = {"harness": ours[:4], "bare": slower[:4]}
    assert not policy.done(times, started=time.perf_counter(), first="harness")
    times = {"harness": ours[:5], "bare": slower[:5]}
    assert policy.done(times, started=time.perf_counter(), first="harness")
    times = {"harness": ours[:10], "bare": noisy[:10]}
    assert not policy.done(times, started=time.perf_counter(), first="harness")


def test_append_replaces_only_the_sections_run(tmp_path, monkeypatch):
    """--only hf --append: the other sections' rows and table stay; a second run replaces its own block."""
    import benchmarks.run as bench
    from benchmarks import hf_families
    from benchmarks.common import row

    monkeypatch.setattr(hf_families, "bench_hf", lambda args, device, split: [
        row("hf", "train hf:llama", 10.0, "tokens/s", "built-in transformer", 20.0, 0.5, arch="hf:llama")])
    pd.DataFrame([row("train", "train lstm 1M T=256", 5.0, "tokens/s", arch="lstm")]).to_csv(
        tmp_path / "benchmarks.csv", index=False)
    (tmp_path / "benchmarks.md").write_text("# Benchmarks (full mode)\n\n| train lstm 1M T=256 |\n")
    for _ in range(2):
        assert bench.main(["--tiny", "--only", "hf", "--append", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "benchmarks.csv")
    assert list(df.row) == ["train lstm 1M T=256", "train hf:llama"]
    text = (tmp_path / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks (full mode)") and "| train lstm 1M T=256 |" in text
    assert text.count("<!-- sections: hf -->") == 1 and text.count("| train hf:llama |") == 1
    assert "Regenerate: `python -m benchmarks.run --tiny --only hf --append" in text


def test_gpu_study_runs_end_to_end_at_cpu_scale(tmp_path):
    """benchmarks/gpu_study.sh with TINY=1: the GPU study's pipeline (C corpus, BPE, windows inside
    one file, the study, the analysis) on a small corpus made here."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"f{i:02d}.c").write_text("".join(
            f"static int f{i}_{j}(int x)\n{{\n\treturn x * {j} + {i};\n}}\n\n" for j in range(40)))
    out = tmp_path / "study"
    env = {**os.environ, "TINY": "1", "CORPUS": str(corpus), "PYTHON": sys.executable,
           "MNEMOSCOPE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_study.sh"), str(out)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(runs.arch) == ["lstm", "transformer"] and (runs.status == "ok").all()
    assert len(list((out / "tokenizers").glob("*.json"))) == 1
    fits = pd.read_csv(out / "fits.csv")
    assert len(fits) == 2 and fits.effective_context.between(1, 32).all()
    assert (fits.effective_context_bytes >= fits.effective_context).all()  # a BPE token holds a byte or more
    buckets = pd.read_parquet(out / "extrapolation_buckets.parquet")
    assert set(buckets.arch) == {"lstm", "transformer"} and buckets.bucket_end.max() == 4 * 32
    # the through-training measurements: kept steps with their score, and the effective context at each
    growth = pd.read_parquet(out / "growth.parquet")
    assert growth.groupby("arch").size().to_dict() == {"lstm": 6, "transformer": 6}
    assert growth.effective_context.between(1, 32).all() and growth.icl_score.notna().all()
    assert len(pd.read_csv(out / "growth_fits.csv")) == 2


def test_history_benchmark_measures_the_share_of_a_run_and_a_checkpoints_cost(tmp_path):
    """benchmarks/history.py --tiny: per shape, a step's, a kept step's and a checkpoint's time, the
    through-training scoring's share of a run and the disk of the kept weights."""
    from benchmarks import history

    assert history.main(["--tiny", "--rounds", "1", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "history.csv")
    assert list(df["shape"]) == ["tiny transformer", "tiny lstm"]
    assert (df["kept_steps"] == 8).all() and (df["step_s"] > 0).all() and df["history_share"].between(0, 1).all()
    assert (df["checkpoint_mb"] > 0).all() and (df["checkpoint_s"] > 0).all() and (df["kept_weights_mb"] > 0).all()
    assert "| tiny lstm |" in (tmp_path / "history.md").read_text()


def test_score_benchmark_measures_the_ratio_and_three_peaks(tmp_path):
    """benchmarks/score.py --tiny: the score path's tokens per second against a bare forward pass of
    the same random Llama, and one window's peak memory three ways (each probe in its own process)."""
    import pytest

    pytest.importorskip("transformers")
    from benchmarks import score

    assert score.main(["--tiny", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "score.csv")
    assert len(df) == 4
    ratio = df.iloc[0]
    assert np.isfinite(ratio["ratio"]) and ratio["ratio"] > 0 and "V=4096, T=256" in ratio["row"]
    peaks = df.iloc[1:]["value"]
    assert (peaks > 0).all()
    assert "`python -m benchmarks.score --tiny --out" in (tmp_path / "score.md").read_text()
