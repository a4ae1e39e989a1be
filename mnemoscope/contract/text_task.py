"""Tokenization of the tasks whose data are documents of text: bytes (the default), a byte-level
BPE trained on the training split only, or a tokenizer file the user brings.

:class:`TextTask` is the base of ``text``, ``code`` and ``books`` (and of any plugin task made of
documents): a subclass says where its documents come from (``documents()``); the base splits
them by document, tokenizes them, and keeps the tokenizer with the prepared arrays (in the
checksummed cache) and in the study folder. Options every such task takes:

* ``bpe=N``: a byte-level BPE of N tokens, trained with Hugging Face ``tokenizers`` on the
  training split alone, never on validation or test (``pip install tokenizers``: the ``bpe``
  extra);
* ``tokenizer=PATH``: a ``tokenizer.json`` the user brings (their own, or GPT-2's); nothing is
  ever downloaded;
* ``windows=document``: every window (training, validation, test) lies inside one document;
  ``windows=any``: windows are cut from the documents joined by a blank line, so one may cross
  into the next document (the default of ``text`` and ``code``; ``books`` defaults to
  ``document``).

Every token id stands for a known number of bytes of text (``token_bytes()``), so a study can
count context in bytes as well as tokens and curves of different tokenizations can be compared.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import UserError
from ..registry import TASKS
from ..specs import parse_spec
from .task import SPLITS, Task, TokenSplit, check_options, content_digest, split_documents, token_dtype

SEPARATOR = b"\n\n"  # between documents, as the byte-level tasks always joined them
WINDOWS = ("any", "document")
TOKENIZATION_OPTIONS = ("bpe", "tokenizer")
#: the BPE recipe; part of the cache key, so a change of recipe trains again
BPE_RECIPE = "bytelevel-bpe-1"
MAX_BPE = 1 << 20  # the largest bpe= vocabulary (its reason: TextTask's message)
INSTALL = "pip install tokenizers (or pip install -e '.[bpe]')"


def _tokenizers():
    try:
        import tokenizers  # optional dependency (the bpe extra): only bpe= and tokenizer= need it
    except ImportError:
        raise UserError(f"subword tokenization (bpe=, tokenizer=) needs Hugging Face tokenizers: {INSTALL}") from None
    return tokenizers


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (GPT-2's pre-tokenization, all 256 bytes in its alphabet, no special
    tokens) of ``vocab_size`` tokens trained on ``texts``: deterministic for the same texts."""
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     special_tokens=[], show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def load_tokenizer(path: str | Path):
    """A ``tokenizer.json`` (Hugging Face format) from disk; one clear line when it is not one."""
    tk = _tokenizers()
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no tokenizer file at {path}")
    try:
        return tk.Tokenizer.from_file(str(p))
    except Exception as exc:
        raise UserError(f"{path} is not a tokenizer file Hugging Face tokenizers can read: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_byte_lengths(tok, vocab_size: int) -> np.ndarray:
    """Bytes of text each id stands for. Exact for a byte-level vocabulary (GPT-2's alphabet);
    otherwise the UTF-8 length of the token decoded alone (approximate where a token holds part
    of a character). Ids the tokenizer does not have count 0."""
    decoder = _byte_decoder()
    out = np.zeros(vocab_size, np.int64)
    for token, i in tok.get_vocab(with_added_tokens=True).items():
        if i >= vocab_size:
            continue
        if all(c in decoder for c in token):
            out[i] = len(token)
        else:
            out[i] = len(tok.decode([i], skip_special_tokens=False).encode("utf-8"))
    return out


def utf8_text(name: str, data: bytes, task: str) -> str:
    """A document's text for a subword tokenizer, which reads UTF-8: decoded exactly, or refused in
    one line naming the document and the first byte that is not UTF-8 (replacing such bytes would
    change the text, and two tokenizations of one corpus would no longer compare at equal text)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        base, cut, part = str(name).rpartition("#")
        where = f"the {part} part" if cut and part in SPLITS else f"offset {exc.start}"
        raise UserError(f"task {task}: {base if cut and part in SPLITS else name} is not UTF-8 (byte "
                        f"0x{data[exc.start]:02x} in {where}; "
                        "perhaps Latin-1 or Windows-1252); bpe= and tokenizer= read UTF-8 text: convert it first "
                        "(e.g. iconv -f latin1 -t utf-8), or train on its bytes (no bpe= or tokenizer=)") from None


class TextTask(Task):
    """A task made of documents of text, tokenized as bytes, a trained BPE or the user's tokenizer.
    Subclasses implement ``documents()`` -> [(name, bytes)]."""

    vocab_size = 256
    default_windows = "any"
    #: the options a subclass takes besides the tokenization and windows (``check_options``)
    extra_options: set[str] = set()

    def __init__(self, source: str | None = None, context_length: int | None = None, **options: Any):
        check_options(self.name, options, {"bpe", "tokenizer", "windows", *self.extra_options})
        bpe, path = options.get("bpe"), options.get("tokenizer")
        if bpe is not None and path is not None:
            raise UserError(f"task {self.name}: give bpe= or tokenizer=, not both")
        if bpe is not None and (isinstance(bpe, bool) or not isinstance(bpe, int) or not 256 < bpe <= MAX_BPE):
            raise UserError(f"task {self.name}: bpe must be a whole number of tokens above 256 (the byte "
                            f"alphabet) and at most {MAX_BPE} (2^20: the embedding and output layers, vocabulary x "
                            f"width each, would otherwise outweigh any model a study sizes, and no corpus trained on "
                            f"here holds that many merges), e.g. {self.name}:bpe=4096; got {bpe!r}")
        windows = options.get("windows", self.default_windows)
        if windows not in WINDOWS:
            raise UserError(f"task {self.name}: windows must be one of {', '.join(WINDOWS)}, not {windows!r}")
        self.windows = windows
        self._tokenizer = None
        self._tokenizer_file = None
        if path is not None:
            self._tokenizer_file = Path(str(path)).expanduser().resolve()
            self._tokenizer = load_tokenizer(self._tokenizer_file)
            self.vocab_size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        elif bpe is not None:
            _tokenizers()  # a missing extra fails now, in one line, before any preparation
            self.vocab_size = int(bpe)
        super().__init__(source, context_length, **options)

    @property
    def byte_level(self) -> bool:
        return self.options.get("bpe") is None and self.options.get("tokenizer") is None

    # -- what subclasses provide ------------------------------------------------------------------
    def documents(self) -> list[tuple[str, bytes]]:
        raise NotImplementedError

    # -- the contract ------------------------------------------------------------------------------
    def fingerprint_inputs(self) -> dict[str, Any]:
        """The options (a tokenizer file by its content, not its path), the content of every
        document read (:func:`content_digest`, so an edited file is prepared again wherever it lies)
        and, for a BPE trained here, the recipe it is trained by."""
        inputs: dict[str, Any] = {"options": {k: v for k, v in self.options.items() if k != "tokenizer"},
                                  "documents": content_digest(self.documents())}
        if self._tokenizer_file is not None:
            inputs["tokenizer"] = hashlib.sha256(self._tokenizer_file.read_bytes()).hexdigest()
        elif not self.byte_level:
            inputs["bpe_recipe"] = BPE_RECIPE
        return inputs

    def build_splits(self) -> dict[str, TokenSplit]:
        parts = split_documents(self.documents())
        for split in SPLITS:
            if not parts[split]:
                raise UserError(f"not enough data to fill the {split} split")
        if self.byte_level:
            encoded = {s: [np.frombuffer(d, dtype=np.uint8) for _, d in parts[s]] for s in SPLITS}
            sep = np.frombuffer(SEPARATOR, dtype=np.uint8)
        else:
            texts = {s: [utf8_text(name, d, self.name) for name, d in parts[s]] for s in SPLITS}
            if self._tokenizer is None:  # trained on the training split alone
                self._tokenizer = train_bpe(texts["train"], self.vocab_size)
            encoded = {s: [np.asarray(e.ids, dtype=np.int64) for e in self._tokenizer.encode_batch(texts[s])]
                       for s in SPLITS}
            sep = np.asarray(self._tokenizer.encode(SEPARATOR.decode()).ids, dtype=np.int64)
        out = {}
        dtype = token_dtype(self.vocab_size)
        for split in SPLITS:
            pieces, spans, at = [], [], 0
            for i, ids in enumerate(encoded[split]):
                if i:
                    pieces.append(sep)
                    at += len(sep)
                pieces.append(ids)
                spans.append((at, at + len(ids)))
                at += len(ids)
            tokens = np.concatenate(pieces).astype(dtype)
            out[split] = TokenSplit(tokens=tokens, documents=[n for n, _ in parts[split]],
                                    spans=np.asarray(spans, np.int64) if self.windows == "document" else None)
        return out

    def prepared_files(self) -> dict[str, bytes]:
        return {} if self._tokenizer is None else {"tokenizer.json": self._tokenizer.to_str().encode()}

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer (None at byte level), as cached with the prepared data."""
        if self.byte_level:
            return None
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.prepared_path("tokenizer.json"))
        return self._tokenizer

    @property
    def tokenizer_fingerprint(self) -> str | None:
        """Identifies the tokenization: None for bytes, else a hash of the tokenizer file."""
        if self.byte_level:
            return None
        return hashlib.sha256(self.prepared_path("tokenizer.json").read_bytes()).hexdigest()[:16]

    def study_files(self) -> dict[str, Path]:
        if self.byte_level:
            return {}
        return {f"tokenizers/{self.fingerprint()}.json": self.prepared_path("tokenizer.json")}

    def token_bytes(self) -> np.ndarray:
        if self.byte_level:
            return np.ones(self.vocab_size, np.int64)
        if not hasattr(self, "_token_bytes"):
            self._token_bytes = token_byte_lengths(self.tokenizer, self.vocab_size)
        return self._token_bytes

    def decode(self, tokens) -> str:
        if self.byte_level:
            return super().decode(tokens)
        return self.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=False)

    def encode(self, text: str) -> np.ndarray:
        if self.byte_level:
            return super().encode(text)
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "windows": self.windows}


# -- tokenizations of one corpus, side by side ----------------------------------------------------
def corpus_and_tokenization(spec: str) -> tuple[str, str]:
    """``text:bpe=1024`` -> ("text", "bpe=1024"); ``text`` -> ("text", "bytes");
    ``text:source=DIR,bpe=300`` -> ("text:DIR", "bpe=300"): the same corpus under different
    tokenizations, so that their curves can share a figure in bytes of context."""
    head, sep, rest = spec.partition(":")
    if not sep:
        return spec, "bytes"
    items = [i.strip() for i in rest.split(",")] if "=" in rest else [f"source={rest}"]
    tok = [i for i in items if i.partition("=")[0].strip() in TOKENIZATION_OPTIONS]
    source = [i.partition("=")[2].strip() for i in items if i.partition("=")[0].strip() == "source"]
    keep = source + [i for i in items if i not in tok and i.partition("=")[0].strip() != "source"]
    return head + (":" + ",".join(keep) if keep else ""), ",".join(tok) or "bytes"


def byte_level_spec(spec: str) -> bool:
    """Whether a task spec names text at byte level (one byte per token): a text task without
    ``bpe`` or ``tokenizer``. False when the task cannot be resolved."""
    try:
        cls, _, options = parse_spec(spec, TASKS)
    except Exception:  # a plugin that cannot be imported now: nothing is known of its tokens
        return False
    return isinstance(cls, type) and issubclass(cls, TextTask) and not set(options) & set(TOKENIZATION_OPTIONS)


def tokens_are(spec: str, vocab: int | None) -> str:
    """What a task's tokens are, in words: bytes, a trained BPE of N tokens, a given tokenizer."""
    tokenization = corpus_and_tokenization(spec)[1]
    v = f" ({vocab:,} tokens)" if vocab else ""
    if tokenization.startswith("bpe="):
        return f"byte-level BPE trained on the training split{v}"
    if tokenization.startswith("tokenizer="):
        return f"the tokenizer {tokenization.partition('=')[2]}{v}"
    if byte_level_spec(spec):
        return f"bytes ({TextTask.vocab_size})"
    return f"the task's own{v}"
