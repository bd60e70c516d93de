"""The shuffled-input control's permutation (pipeline/corpus/shuffle.py), without a model: within
each document's span of a sequence, special tokens in place, and the same whatever the windows."""

from __future__ import annotations

import numpy as np
import pytest

from embwalk.corpus import CorpusConfig, read_documents, tokenize_corpus
from embwalk.corpus.sequences import ShardTokens
from embwalk.corpus.shuffle import SHUFFLE_RULE, TokenShuffle, shuffle_keys
from embwalk.corpus.staged import stage_corpus, staging_identity
from embwalk.errors import CorpusError
from embwalk.executors.units import process_pool
from embwalk.plan import make_plan, plan_staged, shard_tokens_for
from embwalk.store.fs import open_fs
from tests.corpus.test_staged import write_corpus

BOS, SEP = 1, 2


def _window(mode: str = "pack", seq_len: int = 8, n_docs: int = 9, seed: int = 0) -> ShardTokens:
    """A synthetic corpus window: documents of 1..13 content tokens (ids >= 10), each opened by
    BOS and closed by SEP, so both special tokens occur at the start, the end and mid-sequence."""
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[BOS], rng.integers(10, 40, int(rng.integers(1, 14))), [SEP]]) for _ in range(n_docs)]
    rows = {
        "token_id": np.concatenate(docs).astype(np.int32),
        "doc_id": np.repeat(np.arange(n_docs, dtype=np.int64), [len(d) for d in docs]),
        "doc_pos": np.concatenate([np.arange(len(d)) for d in docs]).astype(np.int32),
    }
    return ShardTokens.from_rows(rows, 0, 0, mode, seq_len)


def _groups(win: ShardTokens) -> list[np.ndarray]:
    """Row indices of each document's span inside each sequence."""
    out = []
    for i in range(len(win.seq_offsets) - 1):
        a, b = (int(x) - win.row0 for x in win.seq_offsets[i : i + 2])
        docs = win.doc_ids[a:b]
        for d in np.unique(docs):
            out.append(a + np.flatnonzero(docs == d))
    return out


def _sub_window(win: ShardTokens, s0: int, s1: int) -> ShardTokens:
    """Sequences [s0, s1) of a window, as a worker holding only them would see them."""
    a, b = (int(win.seq_offsets[s]) - win.row0 for s in (s0, s1))
    return ShardTokens(win.row0 + a, win.seq0 + s0, win.token_ids[a:b], win.doc_ids[a:b], win.positions[a:b],
                       win.doc_positions[a:b], win.seq_offsets[s0 : s1 + 1])


@pytest.mark.parametrize("mode", ["pack", "document"])
def test_each_document_span_is_permuted_with_special_tokens_in_place(mode):
    win = _window(mode)
    fed = TokenShuffle(7, (BOS, SEP)).apply(win)
    for field in ("doc_ids", "positions", "doc_positions", "seq_offsets"):  # the fed positions' description
        np.testing.assert_array_equal(getattr(fed, field), getattr(win, field), err_msg=field)
    special = np.isin(win.token_ids, [BOS, SEP])
    np.testing.assert_array_equal(fed.token_ids[special], win.token_ids[special])
    moved = 0
    for rows in _groups(win):
        assert sorted(fed.token_ids[rows]) == sorted(win.token_ids[rows])
        # source_positions point back into the same span of the unshuffled sequence
        seq_start = int(win.seq_offsets[np.searchsorted(win.seq_offsets, win.row0 + rows[0], side="right") - 1])
        back = seq_start - win.row0 + fed.source_positions[rows]
        assert set(back) == set(rows)
        np.testing.assert_array_equal(win.token_ids[back], fed.token_ids[rows])
        moved += int((fed.token_ids[rows] != win.token_ids[rows]).any())
    assert moved > 3
    assert fed.source_positions.dtype == np.int32


def test_the_order_depends_on_the_seed_and_rows_not_on_the_windows():
    for mode in ("pack", "document"):
        win = _window(mode, n_docs=12)
        shuffle = TokenShuffle(3, (BOS, SEP))
        whole = shuffle.apply(win)
        n_seqs = len(win.seq_offsets) - 1
        for cuts in ([0, 1, n_seqs], [0, n_seqs // 2, n_seqs - 1, n_seqs], list(range(n_seqs + 1))):
            parts = [shuffle.apply(_sub_window(win, a, b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            np.testing.assert_array_equal(np.concatenate([p.token_ids for p in parts]), whole.token_ids)
            np.testing.assert_array_equal(np.concatenate([p.source_positions for p in parts]),
                                          whole.source_positions)
        other = TokenShuffle(4, (BOS, SEP)).apply(win)
        assert (other.token_ids != whole.token_ids).any()
        assert sorted(other.token_ids) == sorted(whole.token_ids)


def test_keys_are_splitmix64():
    """The keys are the algorithm SHUFFLE_RULE names: a change to them must change the rule."""
    mask = (1 << 64) - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    for seed in (0, 1, 2**64 - 1):
        base = mix(seed)
        want = [mix((base + (row + 1) * 0x9E3779B97F4A7C15) & mask) for row in (0, 1, 5, 2**40)]
        assert shuffle_keys(seed, np.array([0, 1, 5, 2**40])).tolist() == want
    assert SHUFFLE_RULE.endswith("/v1")


def test_staged_shards_shuffle_like_the_whole_corpus(tmp_path, smollm2, minilm):
    """Staged by a process pool or this process and cut into shards of any size, each shard's window
    shuffles to its slice of the whole corpus shuffled in one process (document mode: a sequence
    that two shards run is shuffled the same in both)."""
    corpus = write_corpus(tmp_path / "corpus", n_files=5)
    for mode, seq_len, tokenizer, mapper in (("pack", 16, smollm2.tokenizer, process_pool(2)),
                                             ("document", 24, minilm.tokenizer, None)):
        cfg = CorpusConfig(path=str(corpus), mode=mode, seq_len=seq_len, shuffle_tokens=True, shuffle_seed=11)
        shuffle = TokenShuffle.for_tokenizer(cfg.shuffle_seed, tokenizer)
        want = tokenize_corpus(read_documents(cfg), tokenizer, cfg)
        whole = shuffle.apply(ShardTokens.of(want, (0, want.n_sequences)))
        fs = open_fs(tmp_path / mode)
        staged, _ = stage_corpus(fs, cfg, tokenizer, mapper)
        for requested in (24, 100):
            plan = plan_staged(staged, fs, shard_tokens_for(requested, 8, seq_len, mode))
            assert plan == make_plan(want, plan.shard_tokens) and len(plan.shards) > 2
            for s in plan.shards:
                win = ShardTokens.from_rows(staged.read_rows(fs, *s.seq_rows), s.seq_rows[0], s.seqs[0], mode,
                                            seq_len)
                got = shuffle.apply(win)
                a, b = s.seq_rows
                np.testing.assert_array_equal(got.token_ids, whole.token_ids[a:b])
                np.testing.assert_array_equal(got.source_positions, whole.source_positions[a:b])
        assert (whole.token_ids != want.token_ids).any()


def test_fixed_tokens_of_a_tokenizer(smollm2, minilm):
    bert = TokenShuffle.for_tokenizer(0, minilm.tokenizer)
    tok = minilm.tokenizer
    assert {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} <= set(bert.fixed_ids)
    assert tok.unk_token_id not in bert.fixed_ids  # [UNK] stands for a piece of text: it moves
    smol = TokenShuffle.for_tokenizer(0, smollm2.tokenizer)
    assert smollm2.tokenizer.eos_token_id in smol.fixed_ids  # the packing separator
    assert list(smol.fixed_ids) == sorted(smol.fixed_ids)
    assert TokenShuffle.from_manifest({"shuffle": smol.describe()}) == smol
    assert TokenShuffle.from_manifest({}) is None


def test_shuffle_options_are_checked_and_leave_the_tokenization_alone(smollm2):
    with pytest.raises(CorpusError, match="shuffle_tokens must be true or false"):
        CorpusConfig(shuffle_tokens="yes")
    for bad in (-1, True, 1.5, 2**64):
        with pytest.raises(CorpusError, match="shuffle_seed"):
            CorpusConfig(shuffle_seed=bad)
    plain, shuffled = CorpusConfig(), CorpusConfig(shuffle_tokens=True, shuffle_seed=5)
    assert "shuffle_tokens" not in plain.token_options() and plain.token_options() == shuffled.token_options()
    # the staged tokens do not depend on the shuffle: a shuffled run reuses (and keeps) a staging
    assert staging_identity(plain, smollm2.tokenizer) == staging_identity(shuffled, smollm2.tokenizer)
