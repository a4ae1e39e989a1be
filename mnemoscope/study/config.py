"""What a study is: its configuration (written to ``config.yaml``, fully resolved) and its plan,
every architecture x task x size x seed as a :class:`RunSpec` with a stable id."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..settings import StudySettings
from ..specs import format_count, is_class_path, parse_count, spec_label
from ..storage import migrations
from ..training.checkpoints import parse_duration


@dataclass
class StudyConfig(StudySettings):
    """Everything that defines a study. Written to config.yaml, fully resolved. Its fields and
    their defaults are :class:`mnemoscope.settings.StudySettings`; this class reads and checks them."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudyConfig":
        if not isinstance(d, dict):
            raise UserError("a study config must be a YAML mapping")
        d = migrations.without_format(d)  # the file's layout (mnemoscope.storage.study_folder), not the study's
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown config key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d).normalized()

    def normalized(self) -> "StudyConfig":
        c = copy.deepcopy(self)
        for key in ("archs", "tasks", "params", "seeds"):
            value = getattr(c, key)
            if not isinstance(value, (list, tuple)):
                value = [value]
            if not value:
                raise UserError(f"{key} is empty")
            setattr(c, key, list(value))
        c.params = [parse_count(p, "parameter count") for p in c.params]
        c.tokens = parse_count(c.tokens, "token budget")
        if c.batch_size in (None, "auto"):
            c.batch_size = "auto"
        else:
            c.batch_size = parse_count(c.batch_size, "batch size")
        c.eval_sequences = parse_count(c.eval_sequences, "eval_sequences")
        if c.context is not None:
            c.context = parse_count(c.context, "context length", minimum=2)
        if c.val_every_tokens is not None:
            c.val_every_tokens = parse_count(c.val_every_tokens, "val_every_tokens")
        if isinstance(c.history, bool) or not isinstance(c.history, int) or c.history < 0:
            raise UserError(f"history must be a whole number of kept steps (0: none), got {c.history!r}")
        if not isinstance(c.keep_weights, bool):
            raise UserError(f"keep_weights must be true or false, got {c.keep_weights!r}")
        every = parse_duration(c.checkpoint_every, "checkpoint_every")
        c.checkpoint_every = None if every is None else str(c.checkpoint_every).strip()
        for s in c.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise UserError(f"seeds must be non-negative integers, got {s!r}")
        if not isinstance(c.hparams, dict):
            raise UserError("hparams must be a mapping of architecture -> settings")
        for key in ("archs", "tasks"):
            for v in getattr(c, key):
                if not isinstance(v, str):
                    raise UserError(f"{key} must be names, got {v!r}")
        if c.name is None:
            c.name = default_name(c)
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", c.name):
            raise UserError(f"study name {c.name!r} may use letters, digits, '.', '_' and '-' only")
        return c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What makes the study this study: every key but those of :data:`EXECUTION_KEYS`."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_KEYS}

    @property
    def checkpoint_seconds(self) -> float | None:
        return parse_duration(self.checkpoint_every, "checkpoint_every")


#: keys that decide how runs execute and what they keep, never their numbers: left out of a default
#: study name's digest (a study started before they existed keeps its name)
EXECUTION_KEYS = ("history", "keep_weights", "checkpoint_every")


NAME_PART_CHARS = 40  # a default name lists whole architectures (tasks) up to this many characters each


def _name_digest(c: StudyConfig) -> str:
    d = c.to_dict()
    for key in ("name", *EXECUTION_KEYS):
        d.pop(key)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:6]


def _slug_word(x) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", Path(str(x).split(":")[-1]).stem or str(x))


def default_name(c: StudyConfig) -> str:
    """``archs_tasks_digest``: each name whole (never cut mid-word); names past NAME_PART_CHARS
    characters are counted instead (``transformer-lstm-and3more``); the digest tells studies apart."""
    def slug(xs):
        words = [_slug_word(x) for x in xs]
        for n in range(len(words), 0, -1):  # as many whole names as fit, at least one
            text = "-".join(words[:n]) + (f"-and{len(words) - n}more" if n < len(words) else "")
            if len(text) <= NAME_PART_CHARS or n == 1:
                return text
    return f"{slug(c.archs)}_{slug(c.tasks)}_{_name_digest(c)}"


def legacy_default_name(c: StudyConfig) -> str:
    """This study's default name before names were kept whole (:func:`mnemoscope.storage.migrations.legacy_default_name`)."""
    return migrations.legacy_default_name([_slug_word(x) for x in c.archs], [_slug_word(x) for x in c.tasks],
                                          _name_digest(c))


@dataclass
class RunSpec:
    arch: str
    task: str
    params: int
    seed: int

    def run_id(self, study: StudyConfig, data: str | None = None, arch_version: str | None = None) -> str:
        """``arch-task-size-sSEED-digest``: the digest covers everything that decides the run's
        numbers, the task's ``data`` fingerprint (:meth:`mnemoscope.contract.task.Task.data_fingerprint`)
        included, so changed data means a new run. ``data=None`` gives the id of a run recorded
        before data fingerprints were (its folder is recognised by it; its label from the file name).
        ``arch_version``: the architecture class's ``version`` where it has one (a changed built-in,
        such as the transformer's convolutions, is a new run; None keeps every older id)."""
        key = [self.arch, self.task, self.params, self.seed, study.context, study.tokens, study.batch_size,
               study.eval_sequences, study.hparams.get(self.arch, {}), study.val_every_tokens]
        legacy = lambda s: Path(s.split(":")[0]).stem if s.endswith(".py") or "/" in s else s.replace(":", "_")
        label = legacy if data is None else lambda s: spec_label(s) if is_class_path(s) else legacy(s)
        key = key if data is None else [*key, data]
        key = key if arch_version is None else [*key, {"arch_version": arch_version}]
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]
        safe = lambda s: re.sub(r"[^A-Za-z0-9]+", "", label(s))[:24]
        return f"{safe(self.arch)}-{safe(self.task)}-{format_count(self.params)}-s{self.seed}-{digest}"


def plan(study: StudyConfig) -> list[RunSpec]:
    return [RunSpec(a, t, p, s) for t in study.tasks for a in study.archs for p in study.params for s in study.seeds]
