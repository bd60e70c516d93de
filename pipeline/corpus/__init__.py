"""Corpus stage: read documents, tokenize them, and form the sequences to extract."""

from __future__ import annotations

from embwalk.lazy import lazy_attributes

# name -> the module that defines it: imported on first use (CorpusConfig stays light)
_WHERE = {
    "CorpusConfig": "embwalk.corpus.config",
    "Document": "embwalk.corpus.documents",
    "read_documents": "embwalk.corpus.documents",
    "TokenizedCorpus": "embwalk.corpus.sequences",
    "tokenize_corpus": "embwalk.corpus.sequences",
    "vocabulary_strings": "embwalk.corpus.sequences",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
