"""CorpusConfig validation: bad option values fail at once, in one line."""

from __future__ import annotations

import pytest

from embwalk.corpus import CorpusConfig
from embwalk.errors import CorpusError
from tests.corpus.helpers import check_message


def test_defaults_are_valid():
    cfg = CorpusConfig()
    assert cfg.path is None and cfg.builtin == "stdlib_docstrings"
    assert cfg.label == "builtin:stdlib_docstrings"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"format": "csv"}, "corpus.format"),
        ({"txt_unit": "sentence"}, "corpus.txt_unit"),
        ({"invalid_utf8": "ignore"}, "corpus.invalid_utf8"),
        ({"mode": "padded"}, "corpus.mode"),
        ({"seq_len": 1}, "corpus.seq_len"),
        ({"seq_len": True}, "corpus.seq_len"),
        ({"seq_len": 8.0}, "corpus.seq_len"),
        ({"max_documents": 0}, "corpus.max_documents"),
        ({"max_tokens": -5}, "corpus.max_tokens"),
        ({"text_field": ""}, "corpus.text_field"),
        ({"path": "  "}, "corpus.path is empty"),
        ({"path": 3}, "corpus.path"),
    ],
)
def test_bad_values_raise(options, fragment):
    with pytest.raises(CorpusError) as excinfo:
        CorpusConfig(**options)
    message = check_message(excinfo.value, fragment)
    if "empty" not in fragment:
        assert repr(next(iter(options.values()))) in message


def test_values_are_checked_again_when_used():
    cfg = CorpusConfig()
    cfg.mode = "nope"  # e.g. mutated by a Hydra override after construction
    with pytest.raises(CorpusError):
        cfg.validate()


def test_unknown_builtin_lists_known_ones():
    with pytest.raises(CorpusError) as excinfo:
        CorpusConfig(builtin="wikipedia")
    check_message(excinfo.value, "'wikipedia'", "stdlib_docstrings")


def test_builtin_name_is_not_checked_when_a_path_is_given(tmp_path):
    assert CorpusConfig(path=str(tmp_path), builtin="whatever").label == str(tmp_path)
