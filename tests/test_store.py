"""The storage layer: the format number, and every older layout of the committed studies read
through mnemoscope.storage.migrations (each claim of its table checked on the committed folders)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from mnemoscope.storage import migrations
from mnemoscope.study.config import StudyConfig, default_name
from mnemoscope.storage.migrations import FORMAT
from mnemoscope.storage.study_folder import RunFolder, StudyFolder

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted(d for d in (ROOT / "results").iterdir() if (d / "config.yaml").is_file())


def test_every_committed_study_is_found():
    assert {s.name for s in STUDIES} >= {"architectures", "books-bpe", "books-long", "hf-families", "modalities",
                                         "pretrained-smollm2", "reference", "scaling-text"}


@pytest.mark.parametrize("study", STUDIES, ids=lambda s: s.name)
def test_each_committed_study_reads_through_the_storage_layer(study):
    folder = StudyFolder(study)
    fmt = folder.format()  # a study written before the number reads as format 0 and is never rewritten
    assert fmt in (0, FORMAT)
    config = folder.config()
    assert "format" not in config and config["archs"]  # config() gives the study, without its format
    if not config.get("score"):
        assert StudyConfig.from_dict(folder.read_config()).name == config["name"]
    finished = folder.finished()
    assert finished and len(finished) == len(folder.read_table("runs.parquet"))
    for run_id in finished:
        run = folder.run(run_id)
        # a rerun of an older study adds runs at today's format beside its old ones
        assert run.format() in (0, FORMAT) and "format" not in run.row() and run.row()["run_id"] == run_id
        losses, mask = run.losses()
        assert losses.shape == mask.shape and len(run.per_position()) == losses.shape[1]
    pp = folder.per_position()  # bytes columns present, filled for byte-level text where missing
    assert {"context_bytes", "target_bytes"} <= set(pp.columns)


def _rows(name):
    folder = StudyFolder(ROOT / "results" / name)
    return [folder.run(r).row() for r in folder.finished()]


def _studies_where(predicate) -> set[str]:
    return {s.name for s in STUDIES if any(predicate(row) for row in _rows(s.name))}


def test_the_migrations_table_names_the_studies_that_have_each_layout():
    assert _studies_where(lambda r: "active_params" not in r) == {"architectures", "modalities", "reference"}
    assert _studies_where(migrations.predates_data_fingerprint) == {
        "architectures", "books-bpe", "hf-families", "modalities", "reference", "scaling-text"}
    assert _studies_where(lambda r: "scoring_parts" not in r) == {
        "architectures", "books-bpe", "hf-families", "modalities", "reference", "scaling-text"}
    no_buckets = {s.name for s in STUDIES if any(
        (s / "runs" / r / "analysis").is_dir() and not (s / "runs" / r / "analysis" / "extrapolation_buckets.parquet").exists()
        for r in StudyFolder(s).finished())}
    assert no_buckets == {"architectures", "hf-families", "modalities", "reference"}
    assert {s.name for s in STUDIES if not (s / "data.json").exists()} == {  # a rerun writes it (architectures, books-bpe)
        "hf-families", "modalities", "pretrained-smollm2", "reference", "scaling-text"}
    data = StudyFolder(ROOT / "results" / "books-long").data()  # says windows cross documents; they do not
    assert all(e["windows_cross_documents"] for v in data.values() for d in v.values() for e in d["splits"].values())
    assert all(migrations.windows_inside_documents(spec) for spec in data)
    import pandas as pd

    no_bytes = {s.name for s in STUDIES if "context_bytes" not in pd.read_parquet(s / "per_position.parquet")}
    assert no_bytes == {"hf-families", "modalities", "scaling-text"}  # architectures, reference: rerun


def test_an_older_run_row_gets_its_active_params():
    row = {"arch": "lstm", "achieved_params": 1000}
    assert migrations.fill_active_params(row, lambda arch: False, lambda: 1 / 0)["active_params"] == 1000
    assert migrations.fill_active_params(row, lambda arch: True, lambda: 250)["active_params"] == 250
    assert migrations.fill_active_params({**row, "active_params": 7}, lambda a: True, lambda: 1 / 0)["active_params"] == 7


def test_format_is_written_and_changes_no_study_identity(tmp_path):
    config = StudyConfig(archs=["lstm"], tasks=["text"], params=[1000]).normalized()
    folder = StudyFolder(tmp_path)
    folder.write_config(config.to_dict())
    on_disk = yaml.safe_load(folder.config_path.read_text())
    assert on_disk["format"] == FORMAT and folder.format() == FORMAT
    again = StudyConfig.from_dict(on_disk)  # a config.yaml given to --config: its format is no study key
    assert again.identity() == config.identity() and again.name == config.name == default_name(again)
    run = RunFolder(tmp_path / "runs" / "r")
    run.write_row({"run_id": "r", "test_loss": 1.5})
    assert json.loads((run.path / RunFolder.RESULT).read_text())["format"] == FORMAT
    assert run.row() == {"run_id": "r", "test_loss": 1.5} and run.format() == FORMAT


def test_report_rebuilds_a_committed_study_identically(tmp_path):
    """benchmarks/rebuild.py on one committed study (every study: run the script)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import rebuild
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    verdicts, notes = rebuild.check(ROOT / "results" / "pretrained-smollm2")
    differs = {k: v for k, v in verdicts.items() if v not in ("identical", "equal values", "equal but paths")}
    assert not differs, differs
    assert verdicts["runs.parquet"] == "identical" and verdicts["report.html"] in ("identical", "equal but paths")


def test_a_run_folder_reads_back_what_it_writes_and_leaves_no_temporary_file(tmp_path):
    import numpy as np

    class Curve:  # what RunFolder.write_val_curve takes of callbacks.LogSpacedValidation
        history = [(1, 8, None)]

        def save(self, f):
            np.savez_compressed(f, steps=np.array([1, 2]), tokens=np.array([8, 16]), loss_sum=np.ones((2, 3)),
                                targets=np.ones(3))

    run = RunFolder(tmp_path / "r")
    run.write_val_curve(Curve())
    run.write_losses(losses=np.full((2, 4), 0.5, np.float32), mask=np.ones((2, 4), bool))
    run.write_step(3, 24, np.zeros((2, 4)), np.ones((2, 4), bool))
    assert run.val_curve()["steps"].tolist() == [1, 2] and run.losses()[0].shape == (2, 4)
    assert [s["step"] for s in run.steps()] == [3]
    left = [p.name for p in run.path.rglob("*") if p.name.startswith(".")]
    assert not left, left


SCORED = [s for s in STUDIES if StudyFolder(s).config().get("score")]


def test_the_committed_scored_folders_load_through_the_migration(tmp_path):
    """A scored folder (study.py score) written before its config.yaml carried ``format`` reads as
    format 0, the current layout; its tables rebuild in a copy without a byte of its config changed."""
    import shutil

    import mnemoscope
    from mnemoscope.score.scoring import collect

    assert [s.name for s in SCORED] == ["pretrained-smollm2"]
    for study in SCORED:
        folder = StudyFolder(study)
        assert folder.format() == 0 and "format" not in yaml.safe_load(folder.config_path.read_text())
        config = folder.score_config()
        assert config["score"]["models"] == {config["archs"][0]: config["score"]["models"][config["archs"][0]]}
        assert config["score"]["task"] == config["tasks"][0] and config["context"] == config["score"]["context"]
        results = mnemoscope.load(study)
        assert list(results.runs["arch"]) == config["archs"] and len(results.per_position) == config["context"]
        copy = tmp_path / study.name
        shutil.copytree(study, copy)
        runs, pp = collect(copy)
        assert list(runs["run_id"]) == folder.finished() and (copy / "config.yaml").read_bytes() == folder.config_path.read_bytes()


def test_an_older_scored_config_lists_its_models_as_paths():
    old = {"archs": ["a"], "score": {"task": "books", "models": ["/some/a.gguf"]}}
    assert migrations.score_config(old)["score"] == {"task": "books", "models": {}}
    assert migrations.score_config({"archs": ["a"], "score": {"models": {"a": "x"}}})["score"]["models"] == {"a": "x"}


def test_a_run_row_from_before_bits_per_byte_gets_it_from_its_losses():
    """bits_per_byte, a column of every runs table with bytes: filled for the committed rows from
    losses.npz (its target bytes, or one byte per target of byte-level text; NaN for other tokens)."""
    import math

    import numpy as np
    import pandas as pd

    from mnemoscope.measure.evaluate import bits_per_byte

    def filled(name):
        folder = StudyFolder(ROOT / "results" / name)
        return [(migrations.fill_bits_per_byte(folder.run(r).row(), folder.run(r).loss_arrays, bits_per_byte),
                 folder.run(r).loss_arrays()) for r in folder.finished()]

    for row, z in filled("reference"):  # bytes: one per token (the version-3 run stores them, all 1)
        assert ("target_bytes" not in z or (z["target_bytes"] == 1).all())
        assert row["bits_per_byte"] == pytest.approx(row["test_loss"] / math.log(2), rel=1e-5)
    for row, z in filled("books-bpe"):  # BPE: its target bytes
        m = z["mask"]
        want = (z["losses"] * m).sum() / math.log(2) / (z["target_bytes"] * m).sum()
        assert row["bits_per_byte"] == pytest.approx(want, rel=1e-6) and want < row["test_loss"] / math.log(2)
    assert all(math.isnan(row["bits_per_byte"]) for row, _ in filled("copy-phase"))  # not text
    for study in STUDIES:  # the committed tables carry it, as their rows fill it
        runs = pd.read_parquet(study / "runs.parquet")
        rows = {r: migrations.fill_bits_per_byte(StudyFolder(study).run(r).row(), StudyFolder(study).run(r).loss_arrays,
                                                 bits_per_byte)["bits_per_byte"] for r in runs["run_id"]}
        np.testing.assert_allclose(runs["bits_per_byte"], runs["run_id"].map(rows), rtol=1e-12)
