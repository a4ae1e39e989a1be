"""The models ``study.py score`` reads, each with its own tokenizer: a study's run folder, a local
Hugging Face folder, a GGUF file, a plugin architecture with a state dict (``SPEC@WEIGHTS``).

Everything a user can get wrong is refused here, in one line, before the score folder is
written: a missing file, a folder that is no model, a model that is not causal, a tokenizer with
ids the model has no row for, a context longer than the model allows (unless ``extrapolate``).
Nothing is downloaded: ``transformers`` loads with ``local_files_only``.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..contract.model import build, check_contract, count_params
from ..contract.task import Task
from ..contract.text_task import token_byte_lengths
from ..errors import ContractError, UserError
from ..registry import ARCHITECTURES
from ..specs import is_class_path, parse_spec, spec_label
from ..storage import files
from ..storage.study_folder import RunFolder
from ..study.runner import Study

HF_INSTALL = "pip install 'transformers>=5' (and gguf for a GGUF file: pip install -e '.[score]')"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class Loaded:
    """A model ready to score, with what is needed to read text through its tokenizer."""

    label: str
    model: nn.Module
    source: str
    kind: str  # run, hf, gguf, plugin
    vocab_size: int
    params: int  # non-embedding parameters
    training_context: int | None  # the longest context the model was made for (None: unknown)
    task_tokens: bool  # reads the task's own tokens (scored on the study's windows)
    encode: Callable[[str], list[int]] | None = None
    token_bytes: np.ndarray | None = None
    tokenizer_fingerprint: str = "none"
    tokens_trained: float | None = None
    identity: list = field(default_factory=list)  # what decides its numbers: weight files' names and hashes
    describe: dict[str, Any] = field(default_factory=dict)


def _stamp(path: Path) -> list:
    """A weight file's part of a model's identity: its name and the hash of its bytes, never its
    folder or time, so the same file scores under the same run id wherever it is installed."""
    return [path.name, files.file_digest(path)]


class CausalLM(nn.Module):
    """A Hugging Face causal LM as an architecture: ``(B, T)`` ids in, ``(B, T, V)`` logits out, no
    cache; ``features``/``head`` where the model's logits are its output layer on its last hidden
    states (checked on a few tokens), so the loss is taken in chunks of positions and the ablation
    computes the last position's logits only."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf
        head = hf.get_output_embeddings()
        if isinstance(head, nn.Linear):
            x = torch.arange(8).view(1, 8) % hf.config.vocab_size
            with torch.no_grad():
                direct = hf(input_ids=x, use_cache=False).logits
                split = head(hf.base_model(input_ids=x, use_cache=False).last_hidden_state)
            if split.shape == direct.shape and torch.allclose(split, direct, atol=1e-4, rtol=1e-4):
                self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf.base_model(input_ids=x, use_cache=False).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=x, use_cache=False).logits


def _transformers():
    try:
        import transformers  # optional heavy dependency (the score and hf extras): Hugging Face models only
    except ImportError:
        raise UserError(f"scoring a Hugging Face folder or a GGUF file needs transformers: {HF_INSTALL}") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # errors stay one line on stderr
    return transformers


def _hf_tokenizer(tok, label: str, vocab: int):
    """(encode, bytes per id, fingerprint) of a Hugging Face tokenizer, refused when it has ids the
    model has no row for."""
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise UserError(f"{label}: its tokenizer is not a fast (tokenizers) one; save it with tokenizer.json")
    # special tokens a converter added past the model's rows (a GGUF's <|endoftext|>) never come from
    # plain text; every other id must have a row
    special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    size = 1 + max(i for i in [*backend.get_vocab(with_added_tokens=True).values(), -1] if i not in special)
    if size > vocab:
        raise UserError(f"{label}: its tokenizer has {size} tokens but the model's vocabulary has {vocab}: "
                        "they do not belong together")
    fingerprint = hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]
    encode = lambda text: backend.encode(text, add_special_tokens=False).ids  # noqa: E731
    return encode, token_byte_lengths(backend, vocab), fingerprint


def _context_limit(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _check_context(label: str, limit: int | None, T: int, extrapolate: bool) -> None:
    if limit is not None and T > limit and not extrapolate:
        raise UserError(f"{label} allows a context of {limit} tokens, not {T}; pass --extrapolate to score it "
                        "past its length on purpose")


def load_hf(path: Path, T: int, extrapolate: bool, gguf: str | None = None) -> Loaded:
    """A Hugging Face folder (``config.json``, weights, tokenizer files) or a GGUF file."""
    tf = _transformers()
    folder, label = (path.parent, path.stem) if gguf else (path, path.name)
    kwargs = {"local_files_only": True, **({"gguf_file": gguf} if gguf else {})}
    if gguf:
        if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF through it
            raise UserError(f"reading the GGUF file {path} needs the gguf package: pip install gguf "
                            "(or pip install -e '.[score]')") from None
    try:
        config = tf.AutoConfig.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise UserError(f"{path} is not a model transformers can read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if getattr(config, "is_encoder_decoder", False) or type(config) not in tf.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserError(f"{path} is not a causal language model (model type {config.model_type!r}); score "
                        "predicts each token from the ones before it")
    if not gguf and not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise UserError(f"{path} holds no weights ({', '.join(WEIGHT_FILES)})")
    limit = _context_limit(config)
    _check_context(label, limit, T, extrapolate)
    try:
        tok = tf.AutoTokenizer.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise UserError(f"{path} has no tokenizer transformers can read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    vocab = int(getattr(config.get_text_config(), "vocab_size", 0) or 0)
    encode, nbytes, fingerprint = _hf_tokenizer(tok, label, vocab)  # refused before the weights are read
    try:
        hf = tf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs).eval()
    except Exception as exc:
        raise UserError(f"cannot load the model of {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    weights = [path] if gguf else sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    model = CausalLM(hf)
    return Loaded(label, model, str(path), "gguf" if gguf else "hf", vocab, count_params(model, non_embedding=True),
                  limit, False, encode, nbytes, fingerprint, identity=[_stamp(p) for p in weights],
                  describe={"model_type": config.model_type, "source": str(path), "kind": "gguf" if gguf else "hf",
                            "max_context": limit})


def load_run(folder: Path, task: Task, task_spec: str, T: int, extrapolate: bool) -> Loaded:
    """A finished run of a study: its trained model, read through its study's tokenizer."""
    model, row = RunFolder(folder).load_model()
    ckpt_context = int(row.get("context") or T)
    if T > ckpt_context and not (extrapolate and getattr(model, "extrapolates", False)):
        raise UserError(f"{folder} was trained at context {ckpt_context}, not {T}"
                        + ("; pass --extrapolate to score it past its length" if getattr(model, "extrapolates", False)
                           else "; its architecture does not take longer sequences"))
    same = row["task"] == task_spec
    loaded = Loaded(row["arch"], model, str(folder), "run", task.vocab_size if same else 0, int(row["achieved_params"]),
                    ckpt_context, same, tokens_trained=row.get("tokens_trained"), identity=[_stamp(RunFolder(folder).model_path)],
                    describe={"arch": row["arch"], "task": row["task"], "run_id": row["run_id"], "kind": "run",
                              "source": str(folder)})
    if not same:  # another tokenization: read the task's text through the run's own tokenizer
        own = Study.from_folder(folder.parent.parent).task(row["task"])
        text_reader(loaded, own, folder)
    return loaded


def text_reader(loaded: Loaded, own: Task, where) -> None:
    """Set ``encode`` and bytes per id from a task's tokenization (bytes or its BPE)."""
    if not callable(getattr(own, "encode", None)) or own.token_bytes() is None:
        raise UserError(f"{where}: its task {own.name} does not read text; score it on its own task")
    loaded.vocab_size = own.vocab_size
    if getattr(own, "byte_level", False):
        loaded.encode = lambda text: list(text.encode("utf-8"))
        loaded.tokenizer_fingerprint = "none"
    else:
        tok = own.tokenizer
        loaded.encode = lambda text: tok.encode(text).ids
        loaded.tokenizer_fingerprint = str(own.tokenizer_fingerprint)
    loaded.token_bytes = np.asarray(own.token_bytes(), np.int64)


def load_plugin(spec: str, weights: Path, task: Task, T: int) -> Loaded:
    """``SPEC@WEIGHTS``: an architecture (registered name or ``file.py:Class``) with a state dict,
    plain or a study's ``model.pt`` checkpoint; it reads the task's own tokens."""
    cls, _, options = parse_spec(spec, ARCHITECTURES)
    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no weights at {weights}") from None
    except Exception as exc:
        raise UserError(f"{weights} is not a state dict torch can read safely: {type(exc).__name__}") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{weights} holds no state dict")
    state = ckpt.get("state_dict", ckpt)
    config = {**ckpt.get("arch_config", {}), **options} if "state_dict" in ckpt else options
    model = build(cls, task.vocab_size, T, config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(f"{weights} does not fit architecture {spec} at vocabulary {task.vocab_size} "
                        f"(the task's tokens): {first}") from None
    try:
        check_contract(model.eval(), task.vocab_size, T, spec)
    except ContractError as exc:
        raise UserError(str(exc)) from None
    training = int(ckpt["context_length"]) if "context_length" in ckpt else None
    return Loaded(spec_label(spec) if is_class_path(spec) else spec, model.eval(),
                  f"{spec}@{weights}", "plugin", task.vocab_size, count_params(model, non_embedding=True), training, True,
                  identity=[spec, _stamp(weights)], describe={"arch": spec, "arch_config": config, "kind": "plugin",
                                                              "source": str(weights)})


def load_model(text: str, task: Task, spec: str, T: int, extrapolate: bool = False) -> Loaded:
    """One MODEL argument, loaded and checked; ``task`` is built from ``spec`` at context T."""
    arch, at, weights = text.rpartition("@")
    if at and arch:
        if not Path(weights).expanduser().is_file():
            raise UserError(f"no weights file at {weights}")
        loaded = load_plugin(arch, Path(weights).expanduser(), task, T)
        _check_context(loaded.label, loaded.training_context, T, extrapolate)
        return loaded
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"no model at {text} (a run folder, a Hugging Face folder, a .gguf file, or SPEC@WEIGHTS)")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{path} is a file but not a GGUF model (.gguf); for a state dict write ARCH@{path}")
        return load_hf(path, T, extrapolate, gguf=path.name)
    if RunFolder(path).finished or RunFolder(path).has_model:
        if not RunFolder(path).has_model:
            raise UserError(f"{path} is a run folder without its weights (model.pt); score a run whose weights are kept")
        return load_run(path, task, spec, T, extrapolate)
    if (path / "config.json").is_file():
        return load_hf(path, T, extrapolate)
    raise UserError(f"{path} is not a model: no result.json and model.pt (a study's run), no config.json "
                    "(a Hugging Face folder)")

