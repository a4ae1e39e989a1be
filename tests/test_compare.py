"""study.py compare: runs of several study folders on one page, paired only when they were scored on
exactly the same data; the README's "bring your architecture" commands on a committed fixture."""
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mnemoscope.cli import main
from mnemoscope.analysis.compare import Selection, load, parse_selection
from mnemoscope.errors import UserError
from mnemoscope.render.figures import BUILTIN_ARCHS, arch_palette, canonical_arch
from mnemoscope.measure.statistics import paired_gap, paired_gap_curve

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "reference-tiny"
TINY = ["--params", "8k", "--tokens", "6k", "--eval-sequences", "8", "--batch-size", "8", "--no-progress", "--no-analysis"]


def _study(text_dir, out, *archs, context="32"):
    assert main(["--arch", *archs, "--task", f"text:{text_dir}", "--context", context, "--out", str(out), *TINY]) == 0
    return out


def test_compare_pairs_same_data_and_refuses_another_context(text_dir, tmp_path, capsys):
    a = _study(text_dir, tmp_path / "A", "transformer", "lstm")
    b = _study(text_dir, tmp_path / "B", "cnn")  # differs from A only in its architecture list
    out = tmp_path / "AB"
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--baseline", f"{a}:transformer", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    for f in ("compare.html", "per_position.png", "gaps.png", "runs.csv", "gaps.csv", "curves.parquet"):
        assert (out / f).stat().st_size > 0, f
    runs = pd.read_csv(out / "runs.csv")
    column = "vs A: transformer"
    assert runs.set_index("arch")[column].to_dict() == {"transformer": "baseline", "lstm": "paired with A: transformer",
                                                        "cnn": "paired with A: transformer"}
    assert runs["fingerprint"].nunique() == 1
    gaps = pd.read_csv(out / "gaps.csv")
    assert set(gaps["arch"]) == {"lstm", "cnn"} and set(gaps["band"]) == {"0-7", "8-31", "all", "growth"}
    assert (gaps["gap_low"] <= gaps["gap"]).all() and (gaps["gap"] <= gaps["gap_high"]).all()
    assert (gaps["gap_high"] > gaps["gap_low"]).all()  # a real interval, not a point
    html = (out / "compare.html").read_text()
    # the per-position and gap figures, and the context use through training (the studies kept 8 steps)
    assert html.count("data:image/png;base64") == 3 and "paired with A: transformer" in html
    assert "How context use grows with training" in html
    assert "refused" not in printed.err and "B: cnn" in printed.out

    # B made at another context length: drawn, unpaired, and the pairing refused in one line naming it
    b2 = _study(text_dir, tmp_path / "B2", "cnn", context="16")
    out2 = tmp_path / "AB2"
    capsys.readouterr()
    assert main(["compare", str(a), str(b2), "--baseline", f"{a}:transformer", "--out", str(out2)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("refused:") and "context length (16 vs 32)" in err[0]
    assert "exit status 3" in err[1] and "--allow-unpaired" in err[1]  # a script can tell
    assert main(["compare", str(a), str(b2), "--baseline", f"{a}:transformer", "--out", str(out2),
                 "--allow-unpaired"]) == 0
    assert capsys.readouterr().err.strip().startswith("refused:")
    runs = pd.read_csv(out2 / "runs.csv").set_index("arch")
    assert runs.loc["cnn", column].startswith("unpaired: differs in context length (16 vs 32)")
    assert set(pd.read_csv(out2 / "gaps.csv")["arch"]) == {"lstm"}  # no gap for the unpaired run
    assert (out2 / "per_position.png").exists()


def test_compare_never_writes_into_a_compared_study(tmp_path, capsys):
    study = tmp_path / "S"
    shutil.copytree(FIXTURE, study)
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}
    for out in (study, study / "compare"):
        assert main(["compare", str(study), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "lies inside the compared study" in err and "\n" not in err
    assert main(["compare", f"{FIXTURE}:lstm", "--baseline", f"{study}:lstm", "--out", str(study / "c")]) == 2
    assert {p: p.read_bytes() for p in study.rglob("*") if p.is_file()} == before


def test_compare_bad_input_is_one_line(text_dir, tmp_path, capsys):
    a = _study(text_dir, tmp_path / "A", "lstm")
    for args, words in ([[str(tmp_path / "nowhere")], "no study folder"],
                        [[f"{a}:gru"], "no finished run of 'gru'"],
                        [[str(a), "--baseline", str(a)], "names no architecture"]):
        capsys.readouterr()
        assert main(["compare", *args, "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and "\n" not in err, err


def test_selection_keeps_architecture_options(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "config.yaml").write_text("name: s\n")
    sel = parse_selection(f"{tmp_path / 's'}:transformer:pos=learned,n_layer=2,lstm")
    assert sel.folder == tmp_path / "s" and sel.archs == ["transformer:pos=learned,n_layer=2", "lstm"]
    assert parse_selection(str(tmp_path / "s")).archs == []
    with pytest.raises(UserError, match="no study at"):
        parse_selection(str(tmp_path))


def test_fingerprint_of_runs_from_before_it_is_computed_from_the_config(tmp_path):
    """Committed studies' runs have no scoring fingerprint: it is rebuilt from config.yaml and the
    stored mask, equal to what a run records today, and nothing is written into the study."""
    recorded = load([Selection(FIXTURE)])[0].set_index("run_id")["scoring_fingerprint"]
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    for path in old.glob("runs/*/result.json"):
        row = json.loads(path.read_text())
        row.pop("scoring_fingerprint"), row.pop("scoring_parts")
        path.write_text(json.dumps(row))
    before = {p: p.stat().st_mtime_ns for p in old.rglob("*")}
    rebuilt = load([Selection(old)])[0].set_index("run_id")["scoring_fingerprint"]
    assert rebuilt.notna().all() and rebuilt.to_dict() == recorded.to_dict()
    assert {p: p.stat().st_mtime_ns for p in old.rglob("*")} == before


def _readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(re.escape(marker) + r"\n```bash\n(.*?)```", text, re.S)
    assert m, f"README.md lost its {marker} block"
    return m.group(1)


def test_bring_your_architecture_readme_commands(tmp_path):
    """The README's three commands, verbatim but for the reference (this fixture instead of
    results/architectures) and the interpreter: one run is trained, then its paired gaps to the
    reference's transformer and LSTM come out at every band."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# my_rnn.py\n.*?)```", readme, re.S).group(1)
    (tmp_path / "my_rnn.py").write_text(code)
    commands = _readme_block("<!-- tested: bring your architecture -->")
    assert len([line for line in commands.splitlines() if line.strip()]) == 3
    script = commands.replace("results/architectures", str(FIXTURE)).replace("python ", f"{sys.executable} ")
    script = script.replace(f"{sys.executable} study.py", f"{sys.executable} {REPO / 'study.py'}")
    env = {**os.environ, "BROWSER": "true", "PYTHONPATH": str(REPO)}  # the page "opens" in /bin/true
    done = subprocess.run(["bash", "-ec", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    study = tmp_path / "results" / "my-rnn"
    assert [p.name.split("-")[0] for p in (study / "runs").iterdir()] == ["MyRNN"]  # exactly one run
    gaps = pd.read_csv(study.parent / "my-rnn-compare" / "gaps.csv")
    mine = gaps[gaps["arch"] == "my_rnn.py:MyRNN"]
    assert set(mine["baseline"]) == {"reference-tiny: transformer:pos=rotary", "reference-tiny: lstm"}
    assert len(mine) == 2 * 4 and np.isfinite(mine[["gap_low", "gap_high"]].to_numpy()).all()
    assert "paired" in pd.read_csv(study.parent / "my-rnn-compare" / "runs.csv").iloc[-1].to_string()


def test_the_readme_reference_holds_what_the_commands_select():
    """results/architectures (the README's reference): its transformer and LSTM are selected by
    the README's words and, though trained before fingerprints existed, pair with each other."""
    runs = load([parse_selection(f"{REPO / 'results' / 'architectures'}:transformer,lstm")])[0]
    assert list(runs["arch"]) == ["transformer:pos=rotary", "lstm"]
    assert runs["scoring_fingerprint"].notna().all() and runs["scoring_fingerprint"].nunique() == 1


def test_gap_curve_is_the_paired_gap_of_each_bin():
    rng = np.random.default_rng(0)
    base = rng.gamma(2, 1, size=(40, 64))
    losses = base + 0.1 + 0.05 * rng.standard_normal(base.shape)
    curve = paired_gap_curve(losses, base, None, n_boot=200)
    assert curve["start"].iloc[0] == 0 and curve["end"].iloc[-1] == 64
    for r in curve.itertuples():  # each bin's gap is the band gap over the same positions
        mask = np.zeros(base.shape, bool)
        mask[:, r.start:r.end] = True
        band = paired_gap(losses, base, mask, n_boot=200).set_index("band").loc["all"]
        assert r.gap == pytest.approx(band["gap"])
        assert r.gap_low < r.gap < r.gap_high
    assert curve["gap_low"].min() > 0.05  # paired: the shared noise cancels, the 0.1 shows everywhere


def test_each_architecture_keeps_its_colour():
    alone = arch_palette(["lstm"])["lstm"]
    crowd = arch_palette(["transformer:pos=learned", "my.py:Net", *BUILTIN_ARCHS])
    assert crowd["lstm"] == alone  # whatever else a figure shows
    assert arch_palette(["transformer:pos=rotary"])["transformer:pos=rotary"] == crowd["transformer"]
    assert canonical_arch("transformer:pos=learned") == "transformer:pos=learned"
    # the window transformer passes pos on to the transformer (**kwargs): rotary is its default too
    assert canonical_arch("window_transformer:pos=rotary,conv=0") == "window_transformer:conv=0"
    assert len({tuple(c) for c in crowd.values()}) == len(crowd)  # eleven curves, eleven colours
    assert arch_palette(["other.py:Net", "my.py:Net"])["my.py:Net"] == crowd["my.py:Net"]


def _cielab(rgb) -> np.ndarray:
    """sRGB (0-1) to CIELAB under D65, to measure how far apart two colours look."""
    c = np.asarray(rgb, float)[:3]
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    f = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(f > 0.008856, np.cbrt(f), 7.787 * f + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_built_in_colours_are_far_apart():
    """Every pair of built-ins is told apart at a glance (CIE76 distance >= 35; seaborn's colour-blind
    palette in order gave the GRU 25.6 from the LSTM, two oranges), and the GPT-2 recipe, drawn beside
    built-ins in most studies, takes none of their colours."""
    palette = arch_palette(BUILTIN_ARCHS)
    labs = {name: _cielab(c) for name, c in palette.items()}
    closest = min((np.linalg.norm(labs[a] - labs[b]), a, b) for a, b in itertools.combinations(labs, 2))
    assert closest[0] >= 35, closest
    gpt2 = arch_palette([*BUILTIN_ARCHS, "transformer:conv=0,init=gpt2"])["transformer:conv=0,init=gpt2"]
    assert tuple(gpt2) not in {tuple(c) for c in palette.values()}


def test_runs_of_different_tokenizers_are_drawn_in_bits_per_byte(tmp_path):
    """A run whose tokenizer differs (here: its record edited to say so, two bytes per token) is never
    paired, and its panel is drawn in bits per byte against bytes of context."""
    from mnemoscope.analysis.compare import compare

    a, b = tmp_path / "bytes", tmp_path / "bpe"
    shutil.copytree(FIXTURE, a)
    shutil.copytree(FIXTURE, b)
    for path in b.glob("runs/*/result.json"):
        row = json.loads(path.read_text())
        parts = json.loads(row["scoring_parts"])
        parts["tokenizer"] = "bpe-test"
        row["scoring_parts"] = json.dumps(parts)
        path.write_text(json.dumps(row))
        pp = pd.read_parquet(path.parent / "per_position.parquet")
        pp["context_bytes"] = 2 * (pp["position"] + 1)
        pp.to_parquet(path.parent / "per_position.parquet")
    c = compare([Selection(a), Selection(b)])
    assert set(c.curves["y_unit"]) == {"test loss (bits/byte)"} and set(c.curves["x_unit"]) == {"bytes of context"}
    theirs = c.curves[c.curves["study"] == "bpe"]
    mine = c.curves[c.curves["study"] == "bytes"]
    assert (theirs["x"] == 2 * (theirs["position"] + 1)).all() and (mine["x"] == mine["position"] + 1).all()
    assert np.allclose(theirs["loss"].to_numpy(), mine["loss"].to_numpy() / 2)  # same nats, twice the bytes
    status = c.runs.set_index("study")[f"vs {c.baselines[0]}"]
    assert status["bpe"].str.startswith("unpaired: differs in tokenizer (bpe-test vs none)").all()
