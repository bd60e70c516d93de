"""The corpus stage's options: where the text comes from and how it becomes sequences."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from embwalk.corpus.builtin import BUILTIN_CORPORA
from embwalk.errors import CorpusError

FORMATS = ("auto", "txt", "jsonl", "parquet", "arrow")
TXT_UNITS = ("file", "line", "paragraph")
INVALID_UTF8 = ("error", "replace")
MODES = ("pack", "document")
DEFAULT_BUILTIN = "stdlib_docstrings"
SHUFFLE_OPTIONS = ("shuffle_tokens", "shuffle_seed")  # the order tokens are fed in, not which tokens


@dataclass
class CorpusConfig:
    """The text: your files or a built-in corpus, and how it is cut into sequences.

    ``validate()`` runs on construction and again when the config is used, because
    Hydra/OmegaConf may build or mutate the object after ``__init__``.
    """

    path: str | None = None  # file, directory (recursive; a save_to_disk dataset's own order) or glob; None -> built-in
    builtin: str | None = DEFAULT_BUILTIN  # built-in corpus used when path is None (None: path is required)
    format: str = "auto"  # auto (by extension) | txt | jsonl (also .gz, .zst) | parquet | arrow
    txt_unit: str = "paragraph"  # txt: file | line | paragraph (blank-line separated)
    text_field: str = "text"  # jsonl key / parquet or arrow column holding the text
    # jsonl key / parquet or arrow column holding each record's target: the corpus is then pairs
    # (text_field the encoder's input), one per record, for an encoder-decoder model's decoder store
    # (document mode; docs/seq2seq.md). None: texts alone.
    target_field: str | None = None
    invalid_utf8: str = "error"  # error | replace (U+FFFD)
    max_documents: int | None = None
    mode: str = "pack"  # pack: fixed seq_len sequences | document: one doc per sequence
    seq_len: int = 256
    max_tokens: int | None = None  # stop after this many stored tokens
    # A control (docs/controls.md): feed each document's tokens within a sequence in a seeded random
    # order, special tokens (BOS, EOS/SEP) in place. Part of the store's identity: never mixed on resume.
    shuffle_tokens: bool = False  # control: feed each document's tokens in a seeded random order (docs/controls.md)
    shuffle_seed: int = 0  # seed of the shuffle (ignored, and not part of the identity, without shuffle_tokens)

    def __post_init__(self) -> None:
        if self.path is not None and self.builtin is None:
            # corpus=files unsets builtin so that a missing path is an error; with a path it is
            # unused, and one value keeps the corpus's identity independent of the preset
            self.builtin = DEFAULT_BUILTIN
        self.validate()

    @property
    def label(self) -> str:
        """The input as a user named it, for error messages."""
        if self.path is None:
            return f"builtin:{self.builtin}"
        return os.fspath(self.path)

    def validate(self) -> None:
        """Raise CorpusError (one line) for any option value the stage cannot honour."""
        _choice("format", self.format, FORMATS)
        _choice("txt_unit", self.txt_unit, TXT_UNITS)
        _choice("invalid_utf8", self.invalid_utf8, INVALID_UTF8)
        _choice("mode", self.mode, MODES)
        if self.path is not None and not isinstance(self.path, (str, os.PathLike)):
            raise CorpusError(f"corpus.path must be a string, got {self.path!r}")
        if self.path is not None and not os.fspath(self.path).strip():
            raise CorpusError("corpus.path is empty (leave it unset for the built-in corpus)")
        if self.path is None:
            if self.builtin is None:  # corpus=files
                raise CorpusError("missing required option: corpus.path (a file, directory or glob of your texts)")
            if self.builtin not in BUILTIN_CORPORA:
                known = ", ".join(sorted(BUILTIN_CORPORA))
                raise CorpusError(f"unknown built-in corpus {self.builtin!r} (known: {known})")
        if not isinstance(self.text_field, str) or not self.text_field:
            got = self.text_field
            raise CorpusError(f"corpus.text_field must be a non-empty string, got {got!r}")
        if self.target_field is not None:
            if not isinstance(self.target_field, str) or not self.target_field or self.target_field == self.text_field:
                raise CorpusError(f"corpus.target_field must be a non-empty string other than corpus.text_field "
                                  f"({self.text_field!r}), got {self.target_field!r}")
            if self.mode != "document":
                raise CorpusError("corpus.target_field needs corpus.mode=document (one input-target pair per sequence)")
            if self.path is None or self.format == "txt":
                raise CorpusError("corpus.target_field needs a jsonl, parquet or arrow corpus.path (records with "
                                  "both fields)")
        _int_at_least("seq_len", self.seq_len, 2)
        if self.max_documents is not None:
            _int_at_least("max_documents", self.max_documents, 1)
        if self.max_tokens is not None:
            _int_at_least("max_tokens", self.max_tokens, 1)
        if not isinstance(self.shuffle_tokens, bool):
            raise CorpusError(f"corpus.shuffle_tokens must be true or false, got {self.shuffle_tokens!r}")
        _int_at_least("shuffle_seed", self.shuffle_seed, 0)
        if self.shuffle_seed >= 2**64:  # the shuffle's hash takes 64 bits of it (pipeline/corpus/shuffle.py)
            raise CorpusError(f"corpus.shuffle_seed must be below 2**64, got {self.shuffle_seed}")

    def token_options(self) -> dict:
        """The options that decide the token rows: every option but the shuffle's, which decides
        only the order they are fed in. Staged tokens are keyed by these, and so is the store's
        ``corpus`` identity, which the shuffle joins as its own key only when on: stores written
        before the shuffle existed keep their identity."""
        options = asdict(self)
        for name in SHUFFLE_OPTIONS:
            del options[name]
        if options["target_field"] is None:  # a corpus of texts keeps the identity it had before pairs
            del options["target_field"]
        return options


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise CorpusError(f"corpus.{name} must be one of {', '.join(allowed)}, got {value!r}")


def _int_at_least(name: str, value: object, low: int) -> None:
    # bool is an int subclass; `seq_len: true` in a YAML file is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CorpusError(f"corpus.{name} must be an integer >= {low}, got {value!r}")
