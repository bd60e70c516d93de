"""Documents: the corpus as numbered texts, read from files or a built-in corpus.

Document ids are 0..n-1 in reading order and reading order depends only on the
input (files sorted by path, documents in file order), so a rerun of the same
job numbers the same documents the same way: planning relies on it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.corpus.builtin import BUILTIN_CORPORA
from pipeline.corpus.config import CorpusConfig
from pipeline.corpus.readers import READERS
from pipeline.errors import CorpusError

# Extensions read when format is "auto"; other files in a directory or glob are ignored.
EXTENSIONS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Document:
    """One unit of text. ``source`` says where it came from, e.g. ``data/a.txt:para3``."""

    doc_id: int
    text: str
    source: str


@dataclass(frozen=True)
class Part:
    """A piece of the corpus read and tokenized on its own, in parallel with the others:
    one input file, or a range of a built-in corpus's source files. Parts are numbered
    in reading order, so documents numbered part after part are numbered as one reader would."""

    index: int
    label: str  # the file, or builtin:NAME[files a:b], for messages
    path: str | None = None  # a corpus file (None: the built-in corpus)
    format: str | None = None  # that file's format
    files: tuple[int, int] | None = None  # the built-in corpus's source files [a, b)


BUILTIN_FILES_PER_PART = 64  # ~20 parts for the stdlib: enough to spread over a node's cores


def corpus_parts(cfg: CorpusConfig) -> list[Part]:
    """The corpus as parts, in reading order (cheap: lists files, reads none of them)."""
    cfg.validate()
    if cfg.path is None:
        n_files = BUILTIN_CORPORA[cfg.builtin][1]()
        spans = [(a, min(a + BUILTIN_FILES_PER_PART, n_files)) for a in range(0, n_files, BUILTIN_FILES_PER_PART)]
        return [Part(i, f"builtin:{cfg.builtin}[files {a}:{b}]", files=(a, b)) for i, (a, b) in enumerate(spans)]
    return [Part(i, path.as_posix(), str(path), fmt) for i, (path, fmt) in enumerate(corpus_files(cfg))]


def part_texts(part: Part, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    """``(source, text)`` of every non-blank document of a part, in order."""
    if part.path is None:
        read, _ = BUILTIN_CORPORA[cfg.builtin]
        texts = ((f"builtin:{source}", text) for source, text in read(slice(*part.files)))
    else:
        texts = ((f"{part.label}:{where}" if where else part.label, text)
                 for where, text in READERS[part.format](Path(part.path), cfg))
    return ((source, text) for source, text in texts if text and not text.isspace())


def read_documents(cfg: CorpusConfig) -> Iterator[Document]:
    """Yield the corpus's non-blank documents in deterministic order, numbered from 0.

    Whitespace-only documents are skipped without taking an id. Stops after
    ``cfg.max_documents``. Raises CorpusError (naming the file) for bad input,
    lazily: a bad file surfaces when reading reaches it.
    """
    doc_id = 0
    for part in corpus_parts(cfg):
        for source, text in part_texts(part, cfg):
            yield Document(doc_id, text, source)
            doc_id += 1
            if doc_id == cfg.max_documents:
                return  # before touching the next file, which may not even need to exist
    if doc_id == 0:
        raise CorpusError(f"corpus has no documents (all empty or whitespace-only): {cfg.label}")


def corpus_files(cfg: CorpusConfig) -> list[tuple[Path, str]]:
    """The files of ``cfg.path`` with their formats, sorted by path."""
    label = os.fspath(cfg.path)
    path = Path(os.path.expanduser(label))
    if path.is_file():
        return [(path, _format_of(path, cfg.format))]
    if path.is_dir():
        candidates, kind = _walk(path), "directory"
    elif path.exists():
        raise CorpusError(f"corpus path is not a file or directory: {label}")
    elif _GLOB_CHARS.intersection(label):
        matches = glob.glob(os.path.expanduser(label), recursive=True)
        candidates, kind = [Path(m) for m in matches if os.path.isfile(m)], "glob"
    else:
        raise CorpusError(f"corpus path does not exist: {label}")
    if cfg.format == "auto":
        known = [(f, EXTENSIONS.get(f.suffix.lower())) for f in candidates]
        files = [(f, fmt) for f, fmt in known if fmt is not None]
    else:
        files = [(f, cfg.format) for f in candidates]
    if not files:
        wanted = ", ".join(EXTENSIONS) if cfg.format == "auto" else "files"
        raise CorpusError(f"no corpus files ({wanted}) in {kind}: {label}")
    return sorted(files, key=lambda item: item[0].as_posix())


def _walk(root: Path) -> list[Path]:
    # Hidden files and directories (.git, .DS_Store) are never corpus text.
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        paths = (Path(dirpath, f) for f in filenames if not f.startswith("."))
        found.extend(p for p in paths if p.is_file())  # no sockets, fifos, broken links
    return found


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise CorpusError(
            f"unknown corpus format for extension {path.suffix or '(none)'!r}"
            f" (set corpus.format to txt, jsonl or parquet): {path}"
        ) from None
