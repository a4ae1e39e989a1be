"""Every older layout of a study folder, read as the current one: the one place that knows them.

A run's ``result.json`` and a study's ``config.yaml`` carry ``format``, :data:`FORMAT` when written
now; a file without the key is format 0, written before the number existed. Format 0 covers
several layouts, told apart by the keys and files they have; each function below reads one of them
and names the committed studies (``results/*/``) that have it (tests/test_store.py checks the
table below on them). The storage layer (:mod:`mnemoscope.storage.study_folder`) calls them, and so do the few
readers that need the study's tasks or architectures to read a layout (``runner``: ids and
``active_params``; ``compare``: data fingerprints; ``report``: windows; ``config``: old names);
no other code knows an old layout.

================================  ===========================================================
layout (what is missing)          committed studies that have it
================================  ===========================================================
``format`` (every file)           all of them
``active_params`` in result.json  architectures, modalities, reference
``data_fingerprint``              architectures, books-bpe, hf-families, modalities,
in result.json                    reference, scaling-text
``scoring_parts`` in result.json  the same six (rebuilt from the study's tasks where compared:
                                  ``mnemoscope.analysis.compare``, which builds them)
bytes columns in                  hf-families, modalities, scaling-text (byte-level text;
per_position.parquet              the others' bytes unknown); architectures and reference
                                  until their reruns with the version-3 transformer
``extrapolation_buckets``         architectures, hf-families, modalities, reference
in runs/<id>/analysis/
``data.json``                     hf-families, modalities, reference, scaling-text (and a
                                  scored study: pretrained-smollm2); architectures and
                                  books-bpe wrote theirs when rerun
windows inside documents          books-long (its data.json, written before the documents'
in data.json                      spans were looked at, says windows may cross documents)
``format`` in a scored folder's   pretrained-smollm2 (written by ``study.py score`` before the
config.yaml                       number was: read as format 0, the same keys)
``score: models:`` a list         none committed: a scored folder of an older ``score`` listed
                                  the models' paths without their labels (:func:`score_config`)
``bits_per_byte`` in result.json  all but the studies run after it (filled from losses.npz:
                                  :func:`fill_bits_per_byte`)
whole names in the default name   none (a study made before is found by rerunning its command)
no convolutions in the weights    architectures, books-bpe, books-long, hf-families,
of a ``transformer``              modalities, reference, scaling-text: GPT-2's recipe, built
                                  so (:func:`transformer_before_convolutions`) and tabled as
                                  ``transformer:conv=0,init=gpt2`` by a rerun
                                  (:func:`arch_before_convolutions`)
convolutions, no ``arch_version`` copy-phase, recall-state, recall-ablation's study runs: the
in result.json                    transformer's version 2 (GPT-2's N(0, 0.02) for q, k, v),
                                  tabled as ``transformer:init=gpt2`` by a rerun
================================  ===========================================================
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..contract.text_task import TextTask, byte_level_spec
from ..errors import UserError
from ..registry import TASKS
from ..specs import parse_spec

def score_config(config: dict[str, Any]) -> dict[str, Any]:
    """A scored folder's config.yaml (``study.py score``) as the current layout reads it: ``score:
    models:`` a mapping of each model's label to its path as typed (an older ``score`` wrote a list of
    paths, whose labels are unknown: read as no mapping, so a rerun lists its own models only)."""
    models = (config.get("score") or {}).get("models")
    return {**config, "score": {**config["score"], "models": models if isinstance(models, dict) else {}}}


#: the layout this code writes: ``format`` in every ``result.json`` and ``config.yaml``
FORMAT = 1


def file_format(d: dict[str, Any]) -> int:
    """The format a ``result.json`` row or a ``config.yaml`` mapping was written in (0: before the key)."""
    return int(d.get("format", 0))


def without_format(config: dict[str, Any]) -> dict[str, Any]:
    """A ``config.yaml`` mapping without its ``format``: the study it describes (the study's
    identity, its name's digest and :class:`mnemoscope.study.config.StudyConfig` know no format)."""
    return {k: v for k, v in config.items() if k != "format"}


def transformer_before_convolutions(config: dict[str, Any], state_dict: dict[str, Any]) -> dict[str, Any]:
    """The config to build a stored ``transformer`` (or ``window_transformer``) from: one trained
    before the architecture's version 2 has no convolution weights in its ``state_dict`` and was
    GPT-2's recipe, so it is built with ``conv=0`` (``transformer_gpt2``; its initialisation does not
    matter to stored weights); any other is unchanged."""
    if "conv" in config or not any(k.endswith(".attn.qkv.weight") for k in state_dict):
        return config
    if any(k.endswith(".attn.conv.weight") for k in state_dict):
        return config
    return {**config, "conv": 0}


def arch_before_convolutions(arch: str, version: Callable[[], str | None]) -> str:
    """The name a stored run of ``transformer`` or ``window_transformer`` is tabled under, where it
    was trained by an earlier version of the architecture, so that a study rerun after a change
    tables the old run and the new one under two names. ``version()`` (called for these two only)
    is the version the run was trained as (:func:`trained_version`):

    - None: GPT-2's recipe from before version 2 (no convolutions), tabled with ``conv=0,init=gpt2``
      (``transformer:conv=0,init=gpt2`` is ``transformer_gpt2``);
    - "2": convolutions, but q, k, v started at GPT-2's N(0, 0.02): tabled with ``init=gpt2``.
    """
    head, sep, options = str(arch).partition(":")
    if head not in ("transformer", "window_transformer") or "conv=" in options or "init=" in options:
        return arch
    extra = {None: "conv=0,init=gpt2", "2": "init=gpt2"}.get(version())
    return arch if extra is None else f"{head}:{options + ',' if options else ''}{extra}"


def trained_version(row: dict[str, Any], state_dict: Callable[[], dict[str, Any]] | None,
                    id_as_version_2: Callable[[], str]) -> str | None:
    """The architecture version a stored run was trained as: recorded in its ``row`` (result.json)
    since version 3; before that, from its weights where they are kept (``state_dict``; None where
    the folder holds none, as in a clone of the committed studies): convolutions mean version 2;
    else from its run id, which held the version from version 2 on (``id_as_version_2()`` is the
    id the run would have as version 2)."""
    if row.get("arch_version") is not None:
        return row["arch_version"]
    if state_dict is not None:
        return None if transformer_before_convolutions({}, state_dict()).get("conv") == 0 else "2"
    return "2" if row.get("run_id") == id_as_version_2() else None


def predates_data_fingerprint(row: dict[str, Any]) -> bool:
    """A run recorded before run ids held the task's data fingerprint (its ``result.json`` has no
    ``data_fingerprint``): it keeps the id it had then (``RunSpec.run_id(config, None)``), so a rerun
    of its study recognises it instead of training it again. Six of the committed studies (all but
    books-long and pretrained-smollm2)."""
    return "data_fingerprint" not in row


def fill_active_params(row: dict[str, Any], has_active: Callable[[str], bool],
                       active_of_model: Callable[[], int]) -> dict[str, Any]:
    """``active_params`` for a row from before the column existed (architectures, modalities,
    reference): counted on the stored model where the architecture says (``has_active(arch)``:
    it defines ``num_active_params``), else the non-embedding parameters (every one is active)."""
    if "active_params" in row:
        return row
    return {**row, "active_params": active_of_model() if has_active(row["arch"]) else row["achieved_params"]}


def recorded_data_fingerprint(row: dict[str, Any], rebuild: Callable[[], str], stored: str | None) -> str | None:
    """A run's data fingerprint: as recorded; for a run from before it was (six committed studies,
    see :func:`predates_data_fingerprint`), its task's as the study's config.yaml rebuilds it
    (``rebuild()``, which may raise a UserError: then ``stored``, the scoring part as recorded)."""
    if isinstance(row.get("data_fingerprint"), str):
        return row["data_fingerprint"]
    try:
        return rebuild()
    except UserError:
        return stored


def with_bytes(pp):
    """``per_position`` rows with ``context_bytes`` and ``target_bytes`` filled where a table from
    before these columns lacks them (architectures, hf-families, modalities, reference,
    scaling-text): a byte-level text task's position t has t+1 bytes of context and 1 byte of
    target; every other task stays NaN (its bytes are unknown, or not text)."""
    pp = pp.copy()
    for col in ("context_bytes", "target_bytes"):
        if col not in pp:
            pp[col] = np.nan
    missing = pp["context_bytes"].isna()
    if missing.any():
        byte_level = pp["task"].map({t: byte_level_spec(t) for t in pp["task"].unique()}).astype(bool)
        fill = missing & byte_level
        pp.loc[fill, "context_bytes"] = pp.loc[fill, "position"] + 1.0
        pp.loc[fill, "target_bytes"] = 1.0
    return pp


def fill_bits_per_byte(row: dict[str, Any], arrays: Callable[[], dict[str, np.ndarray]],
                       measure: Callable[..., tuple[float, float, float]]) -> dict[str, Any]:
    """``bits_per_byte`` for a row from before the column (every committed study): ``measure``
    (:func:`mnemoscope.measure.evaluate.bits_per_byte`) of its ``losses.npz`` (``arrays()``) with the
    target bytes stored there (books-bpe, books-long, pretrained-smollm2 and the later studies), or
    one byte per target for byte-level text (as :func:`with_bytes`), else NaN (the task's tokens are
    not text, or the losses are not kept)."""
    if "bits_per_byte" in row:
        return row
    try:
        z = arrays()
    except (OSError, ValueError, KeyError):
        return {**row, "bits_per_byte": math.nan}
    target = stored_target_bytes(row, z)
    return {**row, "bits_per_byte": measure(z["losses"], z["mask"], target)[0] if target is not None else math.nan}


def stored_target_bytes(row: dict[str, Any], arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The bytes of each target of a run's ``losses.npz`` (``arrays``): as stored, or for a run from
    before they were (architectures, hf-families, modalities, reference, scaling-text) one byte per
    target of byte-level text (as :func:`with_bytes`); None where the tokens are not text."""
    if "target_bytes" in arrays:
        return arrays["target_bytes"]
    if byte_level_spec(str(row.get("task", ""))):
        return np.ones(np.shape(arrays["mask"]), np.int64)
    return None


def windows_inside_documents(spec: str) -> bool:
    """Whether a task spec names text whose windows lie inside one document (``windows=document``,
    the default of ``books``): what a study's data.json says, corrected for studies whose data.json
    was written before it looked at the documents' spans (books-long). False when the task cannot
    be resolved."""
    try:
        cls, _, options = parse_spec(spec, TASKS)
    except Exception:  # a plugin that cannot be imported now: nothing is known of its windows
        return False
    return isinstance(cls, type) and issubclass(cls, TextTask) and options.get("windows", cls.default_windows) == "document"


#: a run's stored analysis tables (``runs/<id>/analysis/NAME.parquet``) that analyses stored before
#: the table existed lack, read as empty: ``extrapolation_buckets`` (architectures, hf-families,
#: modalities, reference)
ANALYSIS_TABLES_ADDED_LATER = ("extrapolation_buckets",)


def legacy_default_name(arch_words: list[str], task_words: list[str], digest: str) -> str:
    """The default study name before names were kept whole (each word cut at 12 characters),
    from the words and digest of today's name: a study made then lies in ``results/<this>``,
    where rerunning its command finds it. No committed study has one; a user's may."""
    slug = lambda words: "-".join(w[:12] for w in words)  # noqa: E731
    return f"{slug(arch_words)}_{slug(task_words)}_{digest}"
