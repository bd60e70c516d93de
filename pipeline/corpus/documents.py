"""Documents: the corpus as numbered texts, read from files or a built-in corpus.

Document ids are 0..n-1 in reading order and reading order depends only on the
input (files sorted by path, documents in file order; a Hugging Face dataset
saved with ``save_to_disk`` keeps its own order of data files), so a rerun of
the same job numbers the same documents the same way: planning relies on it.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from embwalk.corpus.builtin import BUILTIN_CORPORA
from embwalk.corpus.config import CorpusConfig
from embwalk.corpus.readers import READERS
from embwalk.errors import CorpusError

# Extensions read when format is "auto"; other files in a directory or glob are ignored.
# Compressed JSON lines are read by the jsonl reader (it recognises gzip and zstd by their bytes).
EXTENSIONS = {
    ".txt": "txt",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl", ".jsonl.zst": "jsonl", ".ndjson.zst": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
_GLOB_CHARS = frozenset("*?[")
# A directory written by datasets' save_to_disk: a Dataset, or a DatasetDict of them.
_DATASET_FILES = ("state.json", "dataset_info.json")
_DATASET_DICT_FILE = "dataset_dict.json"


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
    path: str | None = None  # a corpus file, e.g. one data file of a dataset (None: the built-in corpus)
    format: str | None = None  # that file's format
    files: tuple[int, int] | None = None  # the built-in corpus's source files [a, b)


BUILTIN_FILES_PER_PART = 64  # ~20 parts for the stdlib: enough to spread over a node's cores


def corpus_parts(cfg: CorpusConfig) -> list[Part]:
    """The corpus as parts, in reading order: one per file (a dataset's data files each one).
    Cheap: lists files and reads none of them (only a save_to_disk dataset's small JSON
    metadata, for the order of its data files)."""
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
    """The files of ``cfg.path`` with their formats, in reading order: sorted by path,
    except that a ``save_to_disk`` dataset's data files keep the dataset's order (they
    sort as one entry, at the place of the dataset's directory)."""
    label = os.fspath(cfg.path)
    path = Path(os.path.expanduser(label))
    datasets = cfg.format in ("auto", "arrow")  # with another explicit format, every file is read in it
    if path.is_file():
        return [(path, _format_of(path, cfg.format))]
    if path.is_dir() and _is_dataset(path):
        if not datasets:
            raise CorpusError(
                f"corpus path is a Hugging Face dataset directory (save_to_disk), not {cfg.format} files;"
                f" set corpus.format to auto or arrow: {label}"
            )
        files = _dataset_files(path)
        if not files:
            raise CorpusError(f"no data files (.arrow) in dataset directory: {label}")
        return [(f, "arrow") for f in files]
    if path.is_dir():
        candidates, dataset_dirs = _walk(path, datasets)
        kind = "directory"
    elif path.exists():
        raise CorpusError(f"corpus path is not a file or directory: {label}")
    elif _GLOB_CHARS.intersection(label):
        matches = [Path(m) for m in glob.glob(os.path.expanduser(label), recursive=True)]
        dataset_dirs = [m for m in matches if datasets and m.is_dir() and _is_dataset(m)]
        # The dataset directories' own files (and splits) come with them, in their order.
        dataset_dirs = [d for d in dataset_dirs if not _inside(d, dataset_dirs)]
        candidates = [m for m in matches if m.is_file() and not _inside(m, dataset_dirs)]
        kind = "glob"
    else:
        raise CorpusError(f"corpus path does not exist: {label}")
    if cfg.format == "auto":
        known = [(f, _extension_format(f)) for f in candidates]
        files = [(f, fmt) for f, fmt in known if fmt is not None]
    else:
        files = [(f, cfg.format) for f in candidates]
    entries = [(f.as_posix(), [(f, fmt)]) for f, fmt in files]
    entries += [(d.as_posix() + "/", [(f, "arrow") for f in _dataset_files(d)]) for d in dataset_dirs]
    ordered = [item for _, items in sorted(entries, key=lambda entry: entry[0]) for item in items]
    if not ordered:
        wanted = ", ".join(EXTENSIONS) if cfg.format == "auto" else "files"
        raise CorpusError(f"no corpus files ({wanted}) in {kind}: {label}")
    return ordered


def _walk(root: Path, datasets: bool) -> tuple[list[Path], list[Path]]:
    """The files under ``root``, and the ``save_to_disk`` dataset directories (not walked
    into: their data files are listed by the dataset) if ``datasets``."""
    # Hidden files and directories (.git, .DS_Store) are never corpus text.
    found, dataset_dirs = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if datasets:
            here = [d for d in dirnames if _is_dataset(Path(dirpath, d))]
            dataset_dirs.extend(Path(dirpath, d) for d in here)
            dirnames[:] = [d for d in dirnames if d not in here]
        paths = (Path(dirpath, f) for f in filenames if not f.startswith("."))
        found.extend(p for p in paths if p.is_file())  # no sockets, fifos, broken links
    return found, dataset_dirs


def _inside(path: Path, dirs: list[Path]) -> bool:
    return any(d in path.parents for d in dirs)


def _is_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / _DATASET_DICT_FILE).is_file() or all((path / f).is_file() for f in _DATASET_FILES)


def _dataset_files(path: Path) -> list[Path]:
    """A save_to_disk directory's data files in the dataset's order: a DatasetDict's splits
    in the order ``dataset_dict.json`` lists them, a Dataset's files in the order
    ``state.json`` lists them (``_data_files``), else its ``.arrow`` files sorted by name.
    Only these JSON files are read: nothing is imported from ``datasets``, nothing unpickled."""
    if (path / _DATASET_DICT_FILE).is_file():
        splits = _json_field(path / _DATASET_DICT_FILE, "splits")
        if not isinstance(splits, list) or not all(_plain_name(s) for s in splits):
            raise CorpusError(f"'splits' is not a list of split names in dataset file: {path / _DATASET_DICT_FILE}")
        files = []
        for split in splits:
            if not all((path / split / f).is_file() for f in _DATASET_FILES):
                raise CorpusError(f"split {split!r} listed in {_DATASET_DICT_FILE} has no dataset directory: "
                                  f"{path / split}")
            files += _dataset_files(path / split)
        return files
    data_files = _json_field(path / "state.json", "_data_files")
    if data_files is None:
        return sorted((f for f in path.iterdir() if f.suffix == ".arrow" and f.is_file()), key=lambda f: f.name)
    names = [entry.get("filename") if isinstance(entry, dict) else None for entry in data_files] \
        if isinstance(data_files, list) else [None]
    if not all(_plain_name(name) for name in names):
        raise CorpusError(f"'_data_files' is not a list of file names in dataset file: {path / 'state.json'}")
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise CorpusError(f"data file {missing[0]!r} listed in state.json is missing from dataset directory: {path}")
    return [path / name for name in names]


def _json_field(path: Path, key: str):
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else type(e).__name__
        raise CorpusError(f"cannot read dataset file ({reason}): {path}") from None
    if not isinstance(value, dict):
        raise CorpusError(f"dataset file is not a JSON object: {path}")
    return value.get(key)


def _plain_name(name: object) -> bool:
    # A file or split name in the directory itself: never a path out of it.
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _extension_format(path: Path) -> str | None:
    name = path.name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return EXTENSIONS[ext]
    return None


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    found = _extension_format(path)
    if found is None:
        raise CorpusError(
            f"unknown corpus format for extension {path.suffix or '(none)'!r}"
            f" (set corpus.format to txt, jsonl, parquet or arrow): {path}"
        )
    return found
