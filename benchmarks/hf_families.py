"""The Hugging Face families' training speed (``--arch hf:FAMILY``) against the built-in
transformer, at the reference study's shape (section ``hf``)."""
from __future__ import annotations


import torch

from benchmarks.common import alternate, Bench, compared, device_batches, fmt_count, row, VOCAB
from benchmarks.references import BareLoop
from mnemoscope.contract.model import build
from mnemoscope.registry import ARCHITECTURES
from mnemoscope.contract.sizing import count_params, size_for
from mnemoscope.training.train import TrainConfig


#: the reference study's shape (results/hf-families): non-embedding parameters, context, batch
HF_SHAPE = {"full": (100_000, 256, 4), "tiny": (20_000, 32, 8)}
HF_BUILTINS = ["ssm", "lstm", "gru"]  # the built-ins the reference study sets beside the families


def bench_hf(args, device, split) -> list[dict]:
    """Training speed of each Hugging Face family (``--arch hf:FAMILY``), and of the built-in
    recurrent models, against the built-in transformer at the reference study's shape: both in a
    bare loop (the model's own cost; the harness adds the same to each), in alternating rounds."""
    params, T, B = HF_SHAPE["tiny" if args.tiny else "full"]
    try:
        from mnemoscope.architectures.hf import FAMILIES, installed_version
    except ImportError:
        FAMILIES, installed_version = {}, lambda: None
    version = installed_version()
    if version is None:
        return [row("hf", "Hugging Face families vs transformer", float("nan"), "tokens/s", context=T,
                    detail="skipped: transformers is not installed (pip install -e '.[hf]')")]
    batches = device_batches(split, T, B, 4, device)

    def loop(arch):
        cls = ARCHITECTURES.get(arch)
        torch.manual_seed(0)
        model = build(cls, VOCAB, T, size_for(cls, params, VOCAB, T, {}))
        return BareLoop(model, batches, device, getattr(cls, "default_hparams", {}).get("lr", TrainConfig.lr), compile=args.compile)

    reference = loop("transformer")
    out = []
    for arch in [f"hf:{name}" for name in FAMILIES] + HF_BUILTINS:
        try:
            ours = loop(arch)
        except Exception as exc:  # a family that cannot run here: the row says why
            out.append(row("hf", f"train {arch}, bare loop", float("nan"), "tokens/s", "built-in transformer",
                           arch=arch, target_params=params, context=T, batch=B,
                           detail=" ".join(f"cannot run here: {type(exc).__name__}: {exc}".split())[:300]))
            continue
        times = alternate(args.rounds, ours=lambda: ours.run(args.chunk), transformer=lambda: reference.run(args.chunk))
        n = count_params(ours.model)
        note = FAMILIES[arch[3:]].note if arch.startswith("hf:") else "built-in"
        out.append(compared("hf", f"train {arch} {fmt_count(n)} T={T}, bare loop", times["ours"], times["transformer"],
                            f"built-in transformer {fmt_count(count_params(reference.model))}, bare loop",
                            work=B * T * args.chunk, arch=arch, target_params=params, params=n, context=T, batch=B,
                            detail="; ".join(x for x in (f"transformers {version}" if arch.startswith("hf:") else "",
                                                         note) if x)))
    return out


# -- the table -------------------------------------------------------------------------------


def section_hf(b: Bench) -> list[dict]:
    """The Hugging Face families' training speed against the built-in transformer."""
    rows = bench_hf(b.args, b.device, b.split)
    b.log("hf: " + ", ".join(f"{r['arch']} {r['ratio']:.3f}" for r in rows if r["arch"]))
    return rows
