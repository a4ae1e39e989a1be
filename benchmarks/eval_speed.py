"""Evaluation speed: per-position evaluation against a bare forward pass, and the truncation
ablation's cost (sections ``eval``, ``truncation``)."""
from __future__ import annotations


import torch

from benchmarks.common import alternate, Bench, compared, EVAL_TARGET, fmt_count, make_model, row, seconds
from benchmarks.references import stamp
from mnemoscope.measure.evaluate import per_position_losses
from mnemoscope.contract.sizing import count_params
from mnemoscope.contract.windows import eval_offsets, window_batch


def bench_eval(arch, params, T, B, n_seq, args, device, split):
    """per_position_losses against a bare forward pass over the same windows, batches made beforehand."""
    _, model = make_model(arch, params, T)
    model.to(device).eval()
    offsets = eval_offsets(split, T, n_seq)
    xs = [window_batch(split, offsets[i:i + B], T)[0].to(device) for i in range(0, len(offsets), B)]

    def bare():
        start = stamp(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for x in xs:
                model(x)
        return stamp(device) - start

    def harness():
        start = stamp(device)
        per_position_losses(model, split, T, n_seq, B)
        return stamp(device) - start

    times = alternate(args.rounds, harness=harness, bare=bare)
    return compared("eval", f"per-position eval {arch} {fmt_count(count_params(model))} T={T}", times["harness"],
                    times["bare"], "bare forward pass, same windows", EVAL_TARGET, f">= {EVAL_TARGET}",
                    work=len(offsets) * T, detail=f"{len(offsets)} sequences", arch=arch, params=count_params(model),
                    context=T, batch=B)


def bench_truncation(arch, params, T, n_targets, reps, device, split):
    """Cost of the truncation ablation (Khandelwal et al.; mnemoscope.analysis.analyze), all its variants,
    in seconds and in forward tokens against one full-context pass over the same windows."""
    try:
        from mnemoscope.analysis import analyze as analysis
    except ImportError:
        analysis = None
    fn = getattr(analysis, "truncation_ablation", None)
    if fn is None:
        return row("truncation", f"truncation ablation {arch}", float("nan"), "seconds", arch=arch, context=T,
                   detail="not available: mnemoscope.analysis.analyze has no truncation_ablation")
    _, model = make_model(arch, params, T)
    model.to(device).eval()
    times = []
    for _ in range(reps):
        start = stamp(device)
        ablation = fn(model, split, T, n_targets, device=device)
        times.append(stamp(device) - start)
    forward = sum(ablation.forward_tokens.values())
    full = len(ablation.available) * T  # one full-context pass over the same windows
    per_variant = ", ".join(f"{k} {fmt_count(v)}" for k, v in ablation.forward_tokens.items())
    return row("truncation", f"truncation ablation {arch} {fmt_count(count_params(model))} T={T}", seconds(times),
               "seconds", "forward tokens of one full-context pass", full, forward / full, "", None, arch=arch,
               params=count_params(model), context=T, reps=reps,
               detail=f"{fmt_count(forward)} forward tokens ({per_variant}) for {len(ablation.available)} targets; "
                      f"ratio = forward tokens / full pass; cost is linear in the targets",
               wall_ratio=float("nan"))


def section_eval(b: Bench) -> list[dict]:
    """Per-position evaluation against a bare forward pass, at the first size and context."""
    rows = []
    small_batch = 8 if b.args.tiny else 32  # evaluation batches, as the study evaluates
    for arch in b.args.archs:
        rows.append(bench_eval(arch, b.sizes[0], b.contexts[0], small_batch, 16 if b.args.tiny else 64, b.args,
                               b.device, b.split))
        b.log(f"eval {arch}: {rows[-1]['ratio']:.3f}")
    return rows


def section_truncation(b: Bench) -> list[dict]:
    """The truncation ablation's cost, at the first size and context."""
    rows = []
    for arch in b.args.archs:
        rows.append(bench_truncation(arch, b.sizes[0], b.contexts[0], 8 if b.args.tiny else 32, min(b.args.reps, 2),
                                     b.device, b.split))
        b.log(f"truncation {arch}: {rows[-1]['detail']}")
    return rows
