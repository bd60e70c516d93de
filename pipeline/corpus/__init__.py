"""Corpus stage: read documents, tokenize them, and form the sequences to extract."""

from embwalk.corpus.config import CorpusConfig
from embwalk.corpus.documents import Document, read_documents
from embwalk.corpus.sequences import TokenizedCorpus, tokenize_corpus, vocabulary_strings

__all__ = [
    "CorpusConfig",
    "Document",
    "TokenizedCorpus",
    "read_documents",
    "tokenize_corpus",
    "vocabulary_strings",
]
