"""Corpus stage: read documents, tokenize them, and form the sequences to extract."""

from __future__ import annotations

from embwalk.lazy import lazy_attributes

# module -> the names it defines: imported on first use (CorpusConfig stays light)
_WHERE = {
    "embwalk.corpus.config": ["CorpusConfig"],
    "embwalk.corpus.documents": ["Document", "read_documents"],
    "embwalk.corpus.sequences": ["TokenizedCorpus", "tokenize_corpus", "vocabulary_strings"],
    "embwalk.corpus.shuffle": ["TokenShuffle"],
}
__all__ = sorted(name for names in _WHERE.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
