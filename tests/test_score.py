"""study.py score: models trained elsewhere (a study's run folder, a Hugging Face folder, a GGUF
file), each through its own tokenizer, measured as a study measures its own; bad input refused in
one line with nothing written. Every model is tiny and made here; nothing is downloaded."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mnemoscope.cli import main
from mnemoscope.analysis.compare import Selection, compare
from mnemoscope.score.scoring import byte_starts
from mnemoscope.score.pairs import pair_bytes

transformers = pytest.importorskip("transformers")
TINY = ["--params", "8k", "--tokens", "6k", "--eval-sequences", "8", "--batch-size", "8", "--no-progress", "--no-analysis"]
FAST = ["--sequences", "6", "--targets", "4"]


@pytest.fixture
def study(text_dir, tmp_path):
    """A finished tiny study (a transformer, bytes, context 16) whose run keeps its weights."""
    out = tmp_path / "study"
    assert main(["--arch", "transformer", "--task", f"text:{text_dir}", "--context", "16", "--out", str(out), *TINY]) == 0
    return out


def _bpe(text_dir, n=300):
    from mnemoscope.contract.text_task import train_bpe
    return train_bpe([p.read_text() for p in sorted(Path(text_dir).glob("*.txt"))], n)


def _llama(text_dir, vocab=None, max_context=64, seed=0, merges=300):
    torch.manual_seed(seed)
    tok = _bpe(text_dir, merges)
    cfg = transformers.LlamaConfig(vocab_size=vocab or tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=max_context, tie_word_embeddings=False)
    return tok, transformers.LlamaForCausalLM(cfg).eval()


def hf_folder(text_dir, folder, **kwargs):
    """A random Hugging Face Llama with a BPE of the test's texts, saved as transformers saves one."""
    tok, model = _llama(text_dir, **kwargs)
    model.save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(folder)
    return folder


def gguf_file(text_dir, path):
    """The same random Llama written as a GGUF file (fp32 tensors, GPT-2-style BPE in its metadata)."""
    gguf = pytest.importorskip("gguf")
    tok, model = _llama(text_dir)
    V = tok.get_vocab_size()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64), w.add_embedding_length(32), w.add_block_count(2), w.add_feed_forward_length(64)
    w.add_head_count(4), w.add_head_count_kv(2), w.add_layer_norm_rms_eps(model.config.rms_norm_eps), w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])])
    w.add_token_types([1] * V)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]])
    w.add_bos_token_id(0), w.add_eos_token_id(0)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    names.update({f"model.layers.{i}.{a}.weight": f"blk.{i}.{b}.weight" for i in range(2) for a, b in parts.items()})
    for k, v in model.state_dict().items():
        x = v.numpy().astype(np.float32)
        heads = 4 if "q_proj" in k else 2 if "k_proj" in k else 0
        if heads:  # llama.cpp's rotary layout of q and k, which transformers undoes on loading
            x = x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        w.add_tensor(names[k], x)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def test_a_run_folder_reproduces_its_study_and_pairs_with_it(study, text_dir, tmp_path, capsys):
    run = next(p for p in (study / "runs").iterdir() if (p / "result.json").exists())
    before = sorted(p.name for p in run.iterdir())
    out = tmp_path / "scored"
    args = ["score", str(run), "--task", f"text:{text_dir}", "--context", "16", "--sequences", "8", "--targets", "4",
            "--out", str(out)]
    assert main(args) == 0
    mine = pd.read_parquet(out / "per_position.parquet")
    theirs = pd.read_parquet(run / "per_position.parquet")
    assert len(mine) == len(theirs) == 16
    np.testing.assert_allclose(mine["loss"], theirs["loss"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(mine["context_bytes"], theirs["context_bytes"])
    row = pd.read_parquet(out / "runs.parquet").iloc[0]
    theirs_row = json.loads((run / "result.json").read_text())
    assert row["scoring_fingerprint"] == theirs_row["scoring_fingerprint"]
    # bits per byte in the run's row and the scored one: bytes, one per token
    assert row["bits_per_byte"] == pytest.approx(theirs_row["bits_per_byte"], rel=1e-5)
    assert theirs_row["bits_per_byte"] == pytest.approx(theirs_row["test_loss"] / np.log(2), rel=1e-5)
    assert sorted(p.name for p in run.iterdir()) == before  # the model's folder is only read
    fits = pd.read_csv(out / "fits.csv")
    assert 1 <= fits["effective_context"].iloc[0] <= 16 and fits["effective_context_bytes"].notna().all()
    for f in ("config.yaml", "context.parquet", "octaves.parquet", "extrapolation_buckets.parquet", "report.html"):
        assert (out / f).exists(), f
    from mnemoscope.storage.migrations import FORMAT
    assert yaml.safe_load((out / "config.yaml").read_text())["format"] == FORMAT  # a scored folder's format, as a study's
    assert [p.name for p in (out / "runs").iterdir()] == [row["run_id"]]  # no working folder (.tmp-*) left
    capsys.readouterr()
    assert main(args) == 0  # a rerun finds the model finished and scores nothing
    assert "already scored" in capsys.readouterr().out
    c = compare([Selection(study), Selection(out)])
    assert "paired with study: transformer" in set(c.runs["vs study: transformer"])
    # the same weights as a plugin architecture with a state dict: the task's own tokens, the same numbers
    plugin = tmp_path / "plugin"
    assert main(["score", f"transformer@{run / 'model.pt'}", *args[2:-2], "--out", str(plugin)]) == 0
    np.testing.assert_allclose(pd.read_parquet(plugin / "per_position.parquet")["loss"], theirs["loss"], atol=1e-5, rtol=0)


def test_hf_folder_gguf_and_run_read_text_through_their_own_tokenizers(study, text_dir, tmp_path):
    folder = hf_folder(text_dir, tmp_path / "tiny-llama")
    (tmp_path / "gguf").mkdir()
    gguf = gguf_file(text_dir, tmp_path / "gguf" / "tiny.gguf")
    run = next(p for p in (study / "runs").iterdir() if (p / "result.json").exists())
    out = tmp_path / "scored"
    # the same corpus named another way than the run's study named it: the run reads it as bytes,
    # on the byte-aligned windows every model shares
    assert main(["score", str(folder), str(gguf), str(run), "--task", f"text:source={text_dir}", "--context", "16",
                 *FAST, "--out", str(out)]) == 0
    runs = pd.read_parquet(out / "runs.parquet").set_index("arch")
    assert set(runs["windows"]) == {"byte-aligned"} and set(runs["kind"]) == {"hf", "gguf", "run"}
    assert runs.loc["tiny", "test_loss"] == pytest.approx(runs.loc["tiny-llama", "test_loss"], abs=1e-5)
    with np.load(out / "runs" / runs.loc["transformer", "run_id"] / "losses.npz") as z:
        assert (z["target_bytes"][z["mask"]] == 1).all()  # bytes: one per token
    with np.load(out / "runs" / runs.loc["tiny-llama", "run_id"] / "losses.npz") as a, \
            np.load(out / "runs" / runs.loc["transformer", "run_id"] / "losses.npz") as b:
        assert (a["window_starts"] == b["window_starts"]).all()  # the same bytes of the same documents
        assert a["target_bytes"][a["mask"]].mean() > 1.5  # a BPE token holds several bytes
    gaps = pd.read_csv(out / "byte_gaps.csv")
    same = gaps[gaps["arch"] == "tiny"]  # the GGUF holds the HF folder's weights and tokenizer
    assert len(same) and np.allclose(same["gap"], 0, atol=1e-5)
    other = gaps[gaps["arch"] == "transformer"]
    assert len(other) and np.isfinite(other[["gap", "gap_low", "gap_high"]]).all().all()
    assert (out / "per_position_bytes.png").stat().st_size > 0
    # the same file installed elsewhere (another folder, a later copy): the same id, nothing scored again
    (tmp_path / "elsewhere").mkdir()
    copy = shutil.copy(gguf, tmp_path / "elsewhere" / "tiny.gguf")
    assert main(["score", str(copy), "--task", f"text:source={text_dir}", "--context", "16", *FAST, "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(runs["run_id"])
    assert yaml.safe_load((out / "config.yaml").read_text())["score"]["models"]["tiny"] == str(copy)


def test_byte_pairing_of_a_model_with_itself_is_zero_and_windows_start_at_lines():
    docs = [("a", b"line one\nline two is longer\n" * 40), ("b", b"words and more\n" * 40), ("c", b"short\n")]
    starts = byte_starts(docs, 16, 10)
    assert len(starts) == 10 and {d for d, _ in starts} == {0, 1}  # c is too short for a window
    assert all(at == 0 or docs[d][1][at - 1:at] == b"\n" for d, at in starts)  # each at a line's start
    assert byte_starts(docs, 16, 10) == starts  # the text alone decides them
    rng = np.random.default_rng(0)
    tb = rng.integers(1, 5, size=(6, 20))
    z = {"losses": rng.random((6, 20)).astype(np.float32), "mask": np.ones((6, 20), bool),
         "bytes": np.cumsum(tb, 1), "target_bytes": np.roll(tb, -1, 1)}
    g = pair_bytes(z, z, n_boot=50)
    assert len(g) and np.allclose(g[["gap", "gap_low", "gap_high"]], 0) and (g["bpb"] == g["baseline_bpb"]).all()


@pytest.mark.parametrize("case", ["missing", "empty", "no-weights", "run-no-weights", "not-causal", "vocab", "context",
                                  "text-file"])
def test_bad_model_fails_in_one_line_and_writes_nothing(case, text_dir, tmp_path, capsys, request):
    path = tmp_path / "model"
    extra = []
    if case == "empty":
        path.mkdir()
    elif case == "no-weights":
        _llama(text_dir)[1].config.save_pretrained(path)
    elif case == "run-no-weights":
        study = request.getfixturevalue("study")
        path = next(p for p in (study / "runs").iterdir() if (p / "result.json").exists())
        (path / "model.pt").unlink()
    elif case == "not-causal":
        transformers.DistilBertConfig(vocab_size=300, dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(path)
    elif case == "vocab":  # a tokenizer of 300 ids, a model with 100 rows
        hf_folder(text_dir, path, vocab=100)
    elif case == "context":
        hf_folder(text_dir, path, max_context=32)
        extra = ["--context", "48"]
    elif case == "text-file":
        path.write_text("not a model")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["score", str(path), "--task", f"text:{text_dir}", *(extra or ["--context", "16"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert not out.exists()
    if case == "context":  # on purpose, as an extrapolation, it is scored
        assert main(["score", str(path), "--task", f"text:{text_dir}", *extra, "--extrapolate", "--sequences", "6",
                     "--targets", "0", "--out", str(out)]) == 0
        buckets = pd.read_parquet(out / "extrapolation_buckets.parquet")
        assert list(buckets["past_training_length"]) == [False, True]
        fits = pd.read_csv(out / "fits.csv")  # --targets 0: no ablation, no effective context
        assert fits["ablation_targets"].iloc[0] == 0 and fits["effective_context"].isna().all()
        assert (out / "report.html").exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_latin1_corpus_is_refused_in_one_line_and_a_refused_score_writes_nothing(text_dir, tmp_path, capsys):
    """A tokenizer reads UTF-8: a Latin-1 corpus is refused in one line naming the file and the
    encoding (not scored with its accented bytes dropped), and --out is left as it was: not made
    when new, byte-identical when it holds earlier scores."""
    folder = hf_folder(text_dir, tmp_path / "tiny-llama")
    latin = tmp_path / "latin"
    latin.mkdir()
    for p in sorted(Path(text_dir).glob("*.txt")):
        (latin / p.name).write_bytes(p.read_text().replace(" the ", " the naïve café ").encode("latin-1"))
    fresh, kept = tmp_path / "fresh", tmp_path / "kept"
    assert main(["score", str(folder), "--task", f"text:{text_dir}", "--context", "16", *FAST, "--out", str(kept)]) == 0
    before = _snapshot(kept)
    for out in (fresh, kept):
        capsys.readouterr()
        assert main(["score", str(folder), "--task", f"text:{latin}", "--context", "16", *FAST, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(r"error: \S*doc\d\d\.txt\S* is not UTF-8 \(byte 0x(ef|e9) .*Latin-1", err[0]), err
    assert not fresh.exists()
    assert _snapshot(kept) == before


def test_a_score_refused_for_short_documents_leaves_out_as_it_was(text_dir, tmp_path, capsys):
    """Refused after the models loaded (the test documents are too short for byte-aligned windows):
    no config.yaml, environment.json or runs/.tmp-* left in --out, new or holding earlier scores."""
    folder = hf_folder(text_dir, tmp_path / "tiny-llama")
    short = tmp_path / "short"
    short.mkdir()
    for i in range(12):
        (short / f"doc{i:02d}.txt").write_text(f"Document {i}: the quick brown fox jumps over the lazy dog.\n")
    fresh, kept = tmp_path / "fresh", tmp_path / "kept"
    assert main(["score", str(folder), "--task", f"text:{text_dir}", "--context", "16", *FAST, "--out", str(kept)]) == 0
    before = _snapshot(kept)
    for out in (fresh, kept):
        capsys.readouterr()
        assert main(["score", str(folder), "--task", f"text:{short}", "--context", "16", *FAST, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "too short for windows of 16 tokens" in err[0], err
    assert not fresh.exists()
    assert _snapshot(kept) == before


def test_one_window_gives_no_interval_and_no_claim_and_no_targets_no_empty_value(text_dir, tmp_path, capsys):
    """--sequences 1: every interval is left out (none of zero width), no octave is called
    significant, and the findings say why in words; --targets 0: the effective context reads
    "not measured", never an empty value."""
    folder = hf_folder(text_dir, tmp_path / "tiny-llama")
    one, none = tmp_path / "one", tmp_path / "none"
    assert main(["score", str(folder), "--task", f"text:{text_dir}", "--context", "16", "--sequences", "1",
                 "--targets", "4", "--out", str(one)]) == 0
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", (one / "report.html").read_text())))
    assert "one window scored, so no interval and no claim of significance" in text
    assert not re.search(r"\[(-?[\d.]+), \1\]", text), re.search(r".{60}\[(-?[\d.]+), \1\].{20}", text).group(0)
    assert "nan" not in text.replace("chi2/dof nan", "")
    assert not pd.read_parquet(one / "octaves.parquet")["significant"].any()
    fits = pd.read_csv(one / "fits.csv")
    assert fits["effective_context_low"].isna().all() and fits["last_significant_octave_start"].isna().all()
    assert main(["score", str(folder), "--task", f"text:{text_dir}", "--context", "16", *FAST[:2], "--targets", "0",
                 "--out", str(none)]) == 0
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", (none / "report.html").read_text()))
    assert "tiny-llama not measured (no truncation ablation: --targets 0)." in text
    assert not re.search(r"tiny-llama \.", text)


def test_a_stopped_score_resumes_from_the_stages_its_working_folder_keeps(tmp_path):
    """runs/.tmp-<id>/ keeps the window losses batch by batch (RunFolder stages): a rerun reads
    them and scores only the batches still missing."""
    from mnemoscope.contract.task import sequences_split
    from mnemoscope.score.scoring import _stage, window_losses
    from mnemoscope.storage.study_folder import StudyFolder

    class Counting(torch.nn.Module):
        calls = 0

        def forward(self, x):
            Counting.calls += 1
            return torch.zeros(*x.shape, 5)

    split = sequences_split(np.arange(4 * 9).reshape(4, 9) % 5, [f"d@{i}" for i in range(4)])
    work = StudyFolder(tmp_path).work("m")
    work.write_stage("losses.partial", {"losses": np.full((2, 8), 7.0, np.float32)})  # two windows done
    z = _stage(work, "losses", lambda: window_losses(Counting(), split, 8, 4, 2, work))
    assert Counting.calls == 1 and z["losses"].shape == (4, 8) and (z["losses"][:2] == 7).all()
    np.testing.assert_allclose(z["losses"][2:], np.log(5), rtol=1e-6)
    again = _stage(work, "losses", lambda: 1 / 0)  # finished: read back, never recomputed
    assert (again["losses"] == z["losses"]).all() and sorted(p.name for p in work.path.iterdir()) == [
        "losses.npz", "losses.partial.npz"]


def test_whole_scores_one_file_from_its_first_byte_to_its_last(text_dir, tmp_path):
    """--whole: a single file (never split 80/10/10) in consecutive windows of the model's tokens,
    the first starting at byte 0, each where the one before ended, the last (shorter) ending at the
    file's last byte: the bytes scored are the file's bytes, every one of them."""
    folder = hf_folder(text_dir, tmp_path / "hf")
    one = tmp_path / "one.txt"
    one.write_bytes((text_dir / "doc00.txt").read_bytes()[:700] + "a naïve café, déjà vu\n".encode())
    out = tmp_path / "whole"
    T = 16
    assert main(["score", str(folder), "--task", f"text:{one}", "--context", str(T), "--targets", "4", "--whole",
                 "--out", str(out)]) == 0
    row = pd.read_parquet(out / "runs.parquet").iloc[0]
    z = dict(np.load(next((out / "runs").iterdir()) / "losses.npz"))
    starts, ctx, tgt, mask = z["window_starts"], z["bytes"], z["target_bytes"], z["mask"]
    assert row["windows"] == "whole" and row["n_windows"] == len(starts) > 2 and set(z["window_documents"]) == {"one.txt"}
    assert starts[0] == 0 and mask[:-1].all()  # from byte 0; every window but the last is whole
    np.testing.assert_array_equal(starts[1:], starts[:-1] + ctx[:-1, T - 1])  # each starts where the one before ended
    last = np.flatnonzero(mask[-1])[-1]
    assert starts[-1] + ctx[-1, last] + tgt[-1, last] == len(one.read_bytes())  # ... to the file's last byte
    # every token but the first is a target once: the targets' bytes are the file's, less the first token's
    assert (tgt * mask).sum() == len(one.read_bytes()) - ctx[0, 0]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["score"]["whole"] is True


def test_compare_ranks_models_of_different_tokenizers_in_bits_per_byte(text_dir, tmp_path):
    """Two scored folders whose tokenizers differ: compare ranks them in bits per byte with an
    interval (never by nats per token, which counts tokens of different lengths); bits per byte is
    a column of the scored folders' runs.parquet and of compare's runs.csv, the models' summed loss
    over ln 2 per byte of their targets."""
    import math

    from mnemoscope.report.compare import comparison_findings
    from mnemoscope.analysis.compare import runs_table

    outs = []
    for merges in (300, 400):
        folder = hf_folder(text_dir, tmp_path / f"bpe{merges}", merges=merges)
        outs.append(tmp_path / f"scored{merges}")
        assert main(["score", str(folder), "--task", f"text:{text_dir}", "--context", "16", *FAST, "--out", str(outs[-1])]) == 0
    for out in outs:
        row = pd.read_parquet(out / "runs.parquet").iloc[0]
        z = np.load(out / "runs" / row["run_id"] / "losses.npz")
        m = z["mask"]
        want = (z["losses"] * m).sum() / math.log(2) / (z["target_bytes"] * m).sum()
        assert row["bits_per_byte"] == pytest.approx(want, rel=1e-6) and row["test_loss"] != pytest.approx(want)
    c = compare([Selection(outs[0]), Selection(outs[1])])
    table = runs_table(c)
    assert table["bits_per_byte"].notna().all() and (table["bits_per_byte_low"] < table["bits_per_byte"]).all()
    assert (table["bits_per_byte"] < table["bits_per_byte_high"]).all()
    (heading, sentence), = [i for i in comparison_findings(c, table) if i[0] == "text"]
    assert "bits per byte" in sentence and "nats/token" not in sentence.split("Effective")[0]
    ranked = table.sort_values("bits_per_byte")
    first, second = (f"{r['arch']}" for r in ranked.to_dict("records"))
    assert f"{ranked['bits_per_byte'].iloc[0]:.3f} [" in sentence and sentence.index(first) < sentence.index(second)
