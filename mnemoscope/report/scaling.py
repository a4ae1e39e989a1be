"""The report's scaling section: L(N), L(C) and the frontier, alpha(N), exponents beside the
published ones, and how each architecture was tuned (tables from :mod:`mnemoscope.analysis.scaling`)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..analysis.scaling import FRONTIER_SKIP, N_BOOT, PUBLISHED, law, scaling_tables
from ..measure.bootstrap import LEVEL, percentile_interval
from ..measure.statistics import HUBER_DELTA, MIN_FIT_POINTS, format_interval, short_number
from ..render.figures import arch_palette, figure_png, html_table, img_tag, legend_below, wrap_title
from ..specs import spec_labels
from ..storage.study_folder import StudyFolder


def _fmt_interval(v, lo, hi, digits=3):
    if v is None or not np.isfinite(v):
        return ""
    if lo is not None and np.isfinite(lo) and np.isfinite(hi):
        return format_interval(v, lo, hi, f".{digits}g")
    return f"{v:.{digits}g}"


def _band(ax, xs, params_json, color):
    """Pointwise 95% band of the bootstrap replicates' fitted curves."""
    params = np.array(json.loads(params_json or "[]"))
    if len(params) < 10:
        return
    curves = np.array([law(xs, *p) for p in params])
    lo, hi = percentile_interval(curves)
    ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)


def size_figure(points: pd.DataFrame, fits: pd.DataFrame):
    """Loss against non-embedding parameters, log-log: points with 95% intervals, fitted L(N) and band."""
    tasks = list(dict.fromkeys(points["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 4.4), squeeze=False)
    palette, name = arch_palette(points["arch"]), spec_labels(points["arch"])
    for ax, task in zip(axes.flat, tasks):
        for arch, d in points[points["task"] == task].groupby("arch", sort=False):
            c = palette[arch]
            ax.errorbar(d["x"], d["loss"], yerr=[d["loss"] - d["loss_low"], d["loss_high"] - d["loss"]], fmt="o",
                        color=c, ms=4, capsize=2, label=name[arch])
            f = fits[(fits["arch"] == arch) & (fits["task"] == task) & (fits["law"] == "L(N)")]
            if len(f) and np.isfinite(f["alpha"].iloc[0]):
                f = f.iloc[0]
                xs = np.geomspace(d["x"].min() / 1.5, d["x"].max() * 1.5, 100)
                ax.plot(xs, law(xs, f["L_inf"], f["x0"], f["alpha"]), color=c, lw=1.2,
                        label=f"{name[arch]}: {f['L_inf']:.3g} + (N/{f['x0']:.2g})^-{f['alpha']:.3g}")
                _band(ax, xs, f["boot_params"], c)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("test loss (nats/token)")
        ax.set_title(wrap_title(task, 6.2))
        ax.grid(alpha=0.3, which="both")
    legend_below(fig, axes.flat, 7)
    return fig


def compute_figure(curves: pd.DataFrame, front: pd.DataFrame, fits: pd.DataFrame):
    """Validation loss against training FLOPs: every run's curve, each architecture's frontier, L(C)."""
    tasks = list(dict.fromkeys(curves["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 4.4), squeeze=False)
    palette, name = arch_palette(curves["arch"]), spec_labels(curves["arch"])
    for ax, task in zip(axes.flat, tasks):
        for (arch, run_id), d in curves[curves["task"] == task].groupby(["arch", "run_id"], sort=False):
            ax.plot(d["compute"], d["val_loss"], color=palette[arch], lw=0.6, alpha=0.45)
        for arch, d in front[front["task"] == task].groupby("arch", sort=False):
            c = palette[arch]
            ax.plot(d["compute"], d["frontier_loss"], color=c, lw=2.2, label=f"{name[arch]} frontier")
            f = fits[(fits["arch"] == arch) & (fits["task"] == task) & (fits["law"] == "L(C)")]
            if len(f) and np.isfinite(f["alpha"].iloc[0]):
                f = f.iloc[0]
                xs = np.geomspace(d["compute"].min(), d["compute"].max(), 100)
                ax.plot(xs, law(xs, f["L_inf"], f["x0"], f["alpha"]), color=c, ls="--", lw=1.2,
                        label=f"{name[arch]}: {f['L_inf']:.3g} + (C/{f['x0']:.2g})^-{f['alpha']:.3g}")
                _band(ax, xs, f["boot_params"], c)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs, counted)")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title(wrap_title(task, 6.2))
        ax.grid(alpha=0.3, which="both")
    legend_below(fig, axes.flat, 7)
    return fig


def alpha_figure(alphas: pd.DataFrame):
    """alpha of each run's per-position power law against its size (Kaplan et al. 2020, Fig. 20)."""
    tasks = list(dict.fromkeys(alphas["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 4.0), squeeze=False)
    palette, name = arch_palette(alphas["arch"]), spec_labels(alphas["arch"])
    for ax, task in zip(axes.flat, tasks):
        for arch, d in alphas[alphas["task"] == task].groupby("arch", sort=False):
            d = d[np.isfinite(d["alpha"].astype(float))]
            ax.errorbar(d["achieved_params"], d["alpha"], yerr=[d["alpha"] - d["alpha_low"], d["alpha_high"] - d["alpha"]],
                        fmt="o-", color=palette[arch], ms=4, capsize=2, label=name[arch])
        ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("alpha of L(t) = L_inf + A t^-alpha")
        ax.set_title(wrap_title(task, 6.2))
        ax.grid(alpha=0.3)
    legend_below(fig, axes.flat, 7)
    return fig


def exponent_table(fits: pd.DataFrame, nopt: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for f in fits.itertuples():
        rows.append({"arch": f.arch, "task": f.task, "law": f.law, "points": f.n_points, "status": f.status,
                     f"alpha [{LEVEL}% CI]": _fmt_interval(f.alpha, f.alpha_low, f.alpha_high),
                     f"L_inf [{LEVEL}% CI]": _fmt_interval(f.L_inf, f.L_inf_low, f.L_inf_high),
                     f"x0 [{LEVEL}% CI]": _fmt_interval(f.x0, f.x0_low, f.x0_high),
                     "rms log residual": f.rms_log_residual, "max |log residual|": f.max_abs_log_residual,
                     "bootstrap refits converged": f.boot_converged})
    for n in nopt.itertuples() if not nopt.empty else []:
        rows.append({"arch": n.arch, "task": n.task, "law": "N_opt ~ C^b", "points": n.n_points, "status": n.note,
                     f"alpha [{LEVEL}% CI]": _fmt_interval(n.exponent_b, None, None)})
    return pd.DataFrame(rows)


def tuning_table(study_dir: Path) -> pd.DataFrame:
    """Per architecture, what was tuned and with how many trials (from config.yaml's hparams)."""
    config = StudyFolder(study_dir).config()
    rows = []
    for arch in config.get("archs", []):
        hp = (config.get("hparams") or {}).get(arch, {})
        t = hp.get("tuning")
        if not t:
            rows.append({"arch": arch, "tuned": "no (defaults or hand-set values)",
                         "values": json.dumps({k: v for k, v in hp.items() if k != "shape"} | hp.get("shape", {}))})
            continue
        rows.append({"arch": arch, "tuned": ", ".join(t.get("searched", [])), "trials": t.get("trials"),
                     "complete": t.get("complete"), "pruned": t.get("pruned"), "failed": t.get("failed"),
                     "at": f"{t.get('params')} params, {t.get('tokens')} tokens, task {t.get('task')}",
                     "best val loss": t.get("best_val_loss"),
                     "values": json.dumps({k: v for k, v in hp.items() if k not in ("shape", "tuning")}
                                          | hp.get("shape", {})),
                     "storage": f"{t.get('storage')} (study {t.get('study_name')})"})
    return pd.DataFrame(rows)


def report_section(study_dir: Path, runs: pd.DataFrame, pp: pd.DataFrame) -> list[tuple[str, str]]:
    """The report's scaling section, from the study's stored run folders (only for size sweeps)."""
    if runs.empty or runs.groupby(["arch", "task"])["params"].nunique().max() < 2:
        return []  # no size sweep: nothing to scale
    tables = scaling_tables(study_dir, runs, n_boot=N_BOOT)
    fits, points, curves, front, nopt, alphas = (tables[k] for k in ("fits", "points", "curves", "frontier",
                                                                     "n_opt", "alpha"))
    parts = []
    if not points.empty and points.groupby(["arch", "task"]).size().max() >= 2:
        parts.append(img_tag(figure_png(size_figure(points, fits)), "loss against parameters"))
    if not curves.empty and not front.empty:
        parts.append(img_tag(figure_png(compute_figure(curves, front, fits)), "loss against compute"))
    if not alphas.empty and alphas.groupby(["arch", "task"]).size().max() >= 2:
        parts.append(img_tag(figure_png(alpha_figure(alphas)), "per-position alpha against parameters"))
    if not fits.empty:
        parts.append("<h3>Exponents</h3>" + html_table(exponent_table(fits, nopt)))
    parts.append("<h3>Published exponents</h3>" + html_table(PUBLISHED))
    if not points.empty:
        parts.append("<h3>L(N): points and residuals</h3>" + html_table(points))
    tuning = tuning_table(study_dir)
    if not tuning.empty:
        parts.append("<h3>Tuning per architecture</h3>" + html_table(tuning))
    note = (f"<p>L(x) = L_inf + (x0/x)^alpha fitted in log space (Huber delta {short_number(HUBER_DELTA)}, summed; "
            "L-BFGS-B from a grid of starts; the same fitter as the per-position analysis). Intervals: "
            f"{N_BOOT} bootstrap replicates over test (L(N)) or validation (L(C)) sequences, one index set shared by all runs, seeds resampled "
            f"where there are several. Fewer than {MIN_FIT_POINTS} points: no fit. Compute counts forward + backward "
            "FLOPs per token on a real step (torch FlopCounterMode; fused LSTM and CPU attention kernels by formula, "
            "causal masking not discounted). The frontier leaves out each run's first "
            f"{FRONTIER_SKIP:.0%} of steps (warm-up); its grid points are not independent, so the L(C) "
            "interval reflects sequence noise only. Published values: Kaplan et al. 2020 (arXiv 2001.08361), "
            "Henighan et al. 2020 (arXiv 2010.14701); their laws are in nats/token on other data.</p>")
    return [("Scaling", note + "\n".join(parts))]
