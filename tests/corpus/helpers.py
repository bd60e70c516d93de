"""Assertions shared by the corpus tests."""

from __future__ import annotations

import os

import pytest

from embwalk.corpus import CorpusConfig, read_documents
from embwalk.errors import CorpusError


def corpus_error(path: str | os.PathLike, *fragments: str, **options) -> str:
    """Read the corpus at ``path``; assert it fails with a one-line CorpusError naming
    ``path`` and containing each fragment. Returns the message."""
    with pytest.raises(CorpusError) as excinfo:
        list(read_documents(CorpusConfig(path=str(path), **options)))
    return check_message(excinfo.value, str(path), *fragments)


def check_message(error: Exception, *fragments: str) -> str:
    message = str(error)
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def texts(path: str | os.PathLike, **options) -> list[str]:
    return [d.text for d in read_documents(CorpusConfig(path=str(path), **options))]


def sources(path: str | os.PathLike, **options) -> list[str]:
    return [d.source for d in read_documents(CorpusConfig(path=str(path), **options))]
