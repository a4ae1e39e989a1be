"""Context use through training: the kept steps, the in-context learning score, the effective
context at each kept step, its law C(D) = a D^g and the 4x crossing, and the report's section."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from mnemoscope.cli import main
from mnemoscope.analysis.growth import _first_within, crossing, fit_growth
from mnemoscope.measure.history import history_steps, icl_positions, icl_score


def test_kept_steps_are_one_per_octave_by_default_and_never_repeat():
    assert history_steps(1280) == [10, 20, 40, 80, 160, 320, 640, 1280]
    short = history_steps(15)
    assert short == sorted(set(short)) and short[0] == 1 and short[-1] == 15
    assert history_steps(1000, 0) == [] and history_steps(1000, 1) == [1000]


def test_icl_positions_are_olssons_where_the_context_allows():
    assert icl_positions(1024) == (50, 500) and icl_positions(550) == (50, 500)
    early, late = icl_positions(256)
    assert (early, late) == (23, 233)  # scaled by 256/550


def test_icl_score_measures_the_late_minus_early_loss_with_an_interval():
    rng = np.random.default_rng(0)
    N, T = 400, 1024
    losses = 3.0 + 0.3 * rng.standard_normal((N, T))
    losses[:, 449:550] -= 0.4  # positions with 450-550 tokens of context are 0.4 nats better
    s = icl_score(losses, np.ones((N, T), bool))
    assert s["icl_early"] == 50 and s["icl_late"] == 500 and s["icl_windows"] == N
    assert s["icl_low"] < -0.4 < s["icl_high"] and abs(s["icl_score"] + 0.4) < 0.02
    flat = icl_score(3.0 + 0.3 * rng.standard_normal((N, T)), np.ones((N, T), bool))
    assert flat["icl_low"] < 0 < flat["icl_high"]
    # windows whose targets in a band are all masked do not count; none at all: NaN
    mask = np.ones((N, T), bool)
    mask[:, 40:60] = False
    assert math.isnan(icl_score(losses, mask)["icl_score"])


def _synthetic(C_of_step: dict[int, int], M: int = 200, seed: int = 0):
    """Ablation losses whose effective context at each step is exactly C_of_step[step]."""
    rng = np.random.default_rng(seed)
    contexts = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256])
    raw, rows = {}, []
    for step, C in C_of_step.items():
        losses = 3.0 + 0.05 * rng.standard_normal((M, len(contexts)))
        losses[:, contexts < C] += 0.5  # worse than full context by far more than 1% below C
        raw[step] = (contexts, losses)
        rows.append({"step": step, "tokens": step * 1000, "effective_context": C, "effective_context_low": C,
                     "effective_context_high": C, "full_context_worse": False})
    return pd.DataFrame(rows), raw


def test_the_law_recovers_a_known_exponent_and_the_crossing_its_point():
    steps = [1, 2, 4, 8, 16, 32]
    fast, raw_fast = _synthetic({s: min(256, 2 * s) for s in steps})  # C = 2 D/1000: g = 1
    slow, raw_slow = _synthetic({s: 4 for s in steps}, seed=1)  # C = 4: g = 0, flat
    assert all(_first_within(raw_fast[s][1].mean(0), raw_fast[s][0], 0.01) == min(256, 2 * s) for s in steps)
    idx = np.random.default_rng(0).integers(0, 200, size=(300, 200))
    f, fb = fit_growth(fast, raw_fast, 256, 0.01, idx=idx)
    s, sb = fit_growth(slow, raw_slow, 256, 0.01, idx=idx)
    assert f["fit_status"] == "ok" and abs(f["g"] - 1) < 1e-6 and f["g_low"] - 1e-9 <= 1 <= f["g_high"] + 1e-9
    assert s["fit_status"] == "flat" and abs(s["g"]) < 1e-6
    c = crossing(f, fb, s, sb)
    # 2 D / 1000 = 4 * 4  ->  D = 8000 tokens, inside the trained range (1000 to 32000)
    assert abs(c["tokens"] - 8000) < 1 and c["tokens_low"] - 1 <= 8000 <= c["tokens_high"] + 1 and c["extrapolation"] < 1
    assert c["defined"] == 1.0
    # the other way round the first never gets there
    assert math.isnan(crossing(s, sb, f, fb)["tokens"])


def test_a_law_needs_three_steps_and_says_when_it_reaches_the_whole_context():
    few, raw = _synthetic({1: 2, 2: 4})
    assert fit_growth(few, raw, 256, 0.01)[0]["fit_status"] == "too few points"
    capped, raw = _synthetic({1: 64, 2: 128, 4: 256})
    assert fit_growth(capped, raw, 256, 0.01)[0]["capped"]


def test_runs_still_learning_get_a_line_each_or_one_line_when_many(tmp_path):
    """A run whose loss still falls more than 2% per doubling of tokens at its last kept step is
    named; three or more are summed up in one line with the range of their rates."""
    from mnemoscope.report.growth import still_learning_lines

    def steps(falls):  # two kept steps per run, 1M and 2M tokens; the loss at the first is 2.0
        return pd.DataFrame([{"run_id": f"r{i}", "tokens": t, "loss": 2.0 if t == 1e6 else 2.0 * (1 - f)}
                             for i, f in enumerate(falls) for t in (1e6, 2e6)])

    runs = pd.DataFrame([{"run_id": f"r{i}", "arch": "lstm", "task": "text", "params": 20_000, "seed": i} for i in range(4)])
    steps([0.05, 0.01, 0.0, 0.0]).to_parquet(tmp_path / "history_steps.parquet")
    (line,) = still_learning_lines(tmp_path, runs)
    assert "seed 0" in line and "5.0% per doubling" in line  # r1's 1% is under the threshold
    steps([0.05, 0.03, 0.09, 0.0]).to_parquet(tmp_path / "history_steps.parquet")
    (line,) = still_learning_lines(tmp_path, runs)
    assert line.startswith("note: 3 of 4 runs are still learning") and "3.0% to 9.0% per doubling" in line
    # a run that learned its task (the default study's transformer on recall: 1e-4 nats, then 1e-9):
    # its fall is a fraction of the earlier loss, at most 100%, not 100,000 times the last one
    steps([0.05, 1 - 5e-6, 0.09, 0.0]).to_parquet(tmp_path / "history_steps.parquet")
    (line,) = still_learning_lines(tmp_path, runs)
    assert "5.0% to 100.0% per doubling" in line


@pytest.mark.parametrize("keep", [True, False])
def test_a_study_keeps_its_history_and_reports_how_context_use_grows(text_dir, tmp_path, keep):
    """A tiny study: each run keeps its steps; analyze adds the effective context at each (from the
    kept weights) and the law; the report has the section, with intervals."""
    out = tmp_path / "study"
    argv = ["--arch", "transformer", "lstm", "--task", f"text:{text_dir}", "--params", "3k", "--context", "16",
            "--tokens", "20k", "--batch-size", "8", "--eval-sequences", "16", "--history", "5", "--no-progress",
            "--out", str(out)] + ([] if keep else ["--no-keep-weights"])
    assert main(argv) == 0
    steps = pd.read_parquet(out / "history_steps.parquet")
    assert steps.groupby("arch").size().to_dict() == {"lstm": 5, "transformer": 5}
    assert (steps["icl_low"] <= steps["icl_score"]).all() and (steps["icl_score"] <= steps["icl_high"]).all()
    history = pd.read_parquet(out / "history.parquet")
    assert len(history) == 2 * 5 * 16 and history["context_bytes"].notna().all()
    # the last kept step is the run's end: the same losses as its final per-position table
    final = pd.read_parquet(out / "per_position.parquet")
    last = history[history["step"] == history["step"].max()]
    assert np.allclose(last.sort_values(["run_id", "position"])["loss"],
                       final.sort_values(["run_id", "position"])["loss"])
    weights = sorted(p.name for p in out.glob("runs/*/history/*.pt"))
    assert len(weights) == (2 * 4 if keep else 0)  # the last step's weights are model.pt
    growth = pd.read_parquet(out / "growth.parquet")
    # with or without a crossing (none without weights), the tables read back with their header
    crossings, laws = pd.read_csv(out / "growth_crossings.csv"), pd.read_csv(out / "growth_fits.csv")
    assert {"task", "arch", "other", "tokens", "tokens_low", "tokens_high"} <= set(crossings.columns)
    assert {"run_id", "g", "g_low", "g_high", "fit_status"} <= set(laws.columns)
    if not keep:
        assert crossings.empty
    page = (out / "report.html").read_text()
    assert "How context use grows with training" in page and "in-context learning score" in page
    # at the last kept step, the effective context is the final analysis's (the same model, targets, rule)
    fits = pd.read_csv(out / "fits.csv").set_index("run_id")
    ends = growth[growth["step"] == growth.groupby("run_id")["step"].transform("max")].set_index("run_id")
    assert (ends["effective_context"] == fits.loc[ends.index, "effective_context"]).all()
    # and reads the same, interval included, in the findings and the through-training sentence
    from mnemoscope.measure.statistics import format_effective_context

    assert {"effective_context_step", "effective_context_min"} <= set(growth.columns)  # how finely it is resolved
    for run_id, end in ends.iterrows():
        final = format_effective_context(fits.loc[run_id].to_dict())
        assert format_effective_context(end.to_dict()) == final
        if keep:
            assert f"{final} after" in page, final
    if keep:
        assert growth["effective_context"].notna().sum() == 10
        assert (growth["effective_context_low"] <= growth["effective_context"]).all()
        assert len(pd.read_csv(out / "growth_fits.csv")) == 2
        # compare draws the same section for studies side by side
        assert main(["compare", str(out), "--out", str(tmp_path / "cmp")]) == 0
        assert "How context use grows with training" in (tmp_path / "cmp" / "compare.html").read_text()
        # committed as a study is: no weights, and each run's stored analysis from an older release
        # (its key without a field added since); analyze again keeps every effective context
        for run in out.glob("runs/*/"):
            shutil.rmtree(run / "history")
            (run / "model.pt").unlink()
            key = json.loads((run / "analysis" / "growth.json").read_text())
            older = {k: key[k] for k in ("n_targets", "tolerance", "n_boot")}  # as books-long's runs keep it
            (run / "analysis" / "growth.json").write_text(json.dumps({**older, "steps": key["steps"][1:]}))
        assert main(["analyze", str(out)]) == 0
        again = pd.read_parquet(out / "growth.parquet")
        pd.testing.assert_frame_equal(again, growth)
    else:  # no weights: the curves and the score at every step, the effective context only at the end
        assert growth["effective_context"].notna().sum() == 2


def test_kept_steps_score_every_kth_window_of_the_final_evaluation(text_dir, tmp_path):
    """At most HISTORY_WINDOWS windows per kept step: every k-th of the final evaluation's, the same at
    every step; the last kept step is those rows of the run's final losses."""
    from mnemoscope.measure.history import read_steps, window_stride

    assert window_stride(256) == 2 and window_stride(128) == 1 and window_stride(300) == 3
    out = tmp_path / "study"
    assert main(["--arch", "lstm", "--task", f"text:{text_dir}", "--params", "3k", "--context", "16", "--tokens", "10k",
                 "--batch-size", "8", "--eval-sequences", "200", "--history", "3", "--no-progress", "--no-analysis",
                 "--out", str(out)]) == 0
    (run,) = [p for p in (out / "runs").iterdir()]
    steps = read_steps(run)
    assert [s["losses"].shape[0] for s in steps] == [100, 100, 100]
    with np.load(run / "losses.npz") as z:
        assert np.array_equal(steps[-1]["losses"], z["losses"][::2])


def test_the_through_training_sentence_gives_an_effective_context_as_the_findings_do():
    """One format, one interval: a point resolved on a grid reads [the lowest length the interval's
    low end stands for, high] in the through-training sentence, as in the findings and summary."""
    from mnemoscope.report.growth import findings
    from mnemoscope.measure.statistics import format_effective_context

    rows = [{"task": "text", "arch": "transformer", "params": 1000, "seed": 0, "step": s, "tokens": t,
             "effective_context": c, "effective_context_low": lo, "effective_context_high": 32,
             "effective_context_step": 1, "effective_context_min": m}
            for s, t, c, lo, m in ((10, 1000, 8, 4, 3), (100, 10000, 27, 24, 17))]
    text = findings(pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())
    assert format_effective_context(rows[-1]) == "27 [17, 32]"
    assert "effective context 8 [3, 32] tokens after" in text and "27 [17, 32] after" in text, text


def test_a_task_scoring_some_targets_says_its_in_context_learning_score_is_undefined(tmp_path):
    """copy scores a few targets at a window's end: no window has a target around both lengths of
    context the score compares. The page says so, in words, instead of an empty panel and column."""
    out = tmp_path / "study"
    assert main(["--arch", "lstm", "--task", "copy", "--params", "2k", "--context", "32", "--tokens", "8k",
                 "--batch-size", "8", "--eval-sequences", "16", "--history", "3", "--no-progress", "--no-analysis",
                 "--out", str(out)]) == 0
    assert pd.read_parquet(out / "history_steps.parquet")["icl_score"].isna().all()
    page = (out / "report.html").read_text()
    assert "The in-context learning score is not defined on copy" in page
    assert "no test window of copy has a scored target in both places" in page
    assert "<td>not defined</td>" in page


def test_the_kept_step_grid_in_bytes_draws_only_panels_with_data_and_nothing_overlaps():
    """Tasks without bytes (recall) get no empty panel in the grid against bytes of context; no
    panel's title runs into the axis labels of the panel above."""
    import matplotlib.pyplot as plt
    from matplotlib.transforms import Bbox

    from mnemoscope.report.growth import curves_figure

    rows = []
    for task, has_bytes in (("text", True), ("code", True), ("recall", False)):
        for arch in ("transformer", "lstm", "cnn"):
            for step, tokens in ((10, 1000), (100, 10000)):
                for position in range(32):
                    rows.append({"task": task, "arch": arch, "params": 1000, "seed": 0, "step": step, "tokens": tokens,
                                 "position": position, "loss": 3 - 0.01 * position - 0.1 * (step == 100),
                                 "context_bytes": 2.5 * (position + 1) if has_bytes else np.nan})
    history = pd.DataFrame(rows)
    fig = curves_figure(history, "context_bytes")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_title()]  # the colour bar has no title
    assert sorted(ax.get_title() for ax in panels if ax.axison) == sorted(
        f"{a} on {t}" for t in ("text", "code") for a in ("transformer", "lstm", "cnn"))
    assert all(ax.lines for ax in panels if ax.axison)  # every panel drawn holds curves

    def boxes(ax):  # the axis labels and tick labels below a panel
        texts = [ax.xaxis.label, *ax.get_xticklabels()]
        return [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text()]

    for upper in panels:
        for lower in panels:
            if lower is upper:
                continue
            title = lower.title.get_window_extent(renderer)
            assert not any(Bbox.intersection(title, b) for b in boxes(upper)), (lower.get_title(), upper.get_title())
    plt.close(fig)
