"""The dataset's order arithmetic: shares, round-robin accounting and the shuffle buffer."""

from __future__ import annotations

import numpy as np
import pytest

from embwalk.query import order


def _round_robin(counts: list[int], k: int) -> list[int]:
    """What a DataLoader does, one batch at a time."""
    done, left = [0] * len(counts), k
    while left > 0 and any(d < c for d, c in zip(done, counts, strict=True)):
        for w, c in enumerate(counts):
            if done[w] < c and left > 0:
                done[w] += 1
                left -= 1
    return done


def _turns(counts: list[int]) -> list[int]:
    """The worker of each batch a DataLoader yields."""
    left, out = list(counts), []
    while any(left):
        for w in range(len(left)):
            if left[w]:
                out.append(w)
                left[w] -= 1
    return out


@pytest.mark.parametrize("counts", [[3, 3], [4, 3], [5, 1, 0, 2], [0, 0], [7], [1, 3, 2]])
def test_resume_point_matches_a_round_robin(counts):
    for k in range(sum(counts) + 2):
        done, following = order.resume_point(counts, k)
        assert done == _round_robin(counts, k), k
        # a fresh DataLoader over the remaining batches, roles rotated by `following`, continues the same turns
        workers = len(counts)
        remaining = [counts[(i + following) % workers] - done[(i + following) % workers] for i in range(workers)]
        rotated = [(i + following) % workers for i in _turns(remaining)]
        assert rotated == _turns(counts)[k:], k


def test_shares_partition_the_stream():
    for n, world, workers, batch in [(155, 2, 2, 7), (10, 3, 2, 4), (64, 2, 3, 8), (5, 4, 2, 3)]:
        covered = []
        for rank in range(world):
            span = order.rank_span(n, rank, world, drop_last=False)
            for w in range(workers):
                a, b = order.worker_span(span, w, workers, batch, drop_last=False)
                if w < workers - 1:
                    assert (b - a) % batch == 0  # only a rank's last worker ends with a short batch
                covered += list(range(a, b))
        assert covered == list(range(n))


def test_drop_last_gives_every_rank_the_same_full_batches():
    n, world, workers, batch = 155, 2, 2, 7
    counts = []
    for rank in range(world):
        span = order.rank_span(n, rank, world, drop_last=True)
        spans = [order.worker_span(span, w, workers, batch, drop_last=True) for w in range(workers)]
        assert all((b - a) % batch == 0 for a, b in spans)
        counts.append(sum(order.batch_count(s, batch) for s in spans))
    assert counts == [n // world // batch] * world


def test_segments_follow_the_block_order():
    blocks = order.cut_blocks([(0, 10), (10, 25), (40, 43)], 4)
    assert blocks.tolist() == [[0, 4], [4, 8], [8, 10], [10, 14], [14, 18], [18, 22], [22, 25], [40, 43]]
    shuffled = order.epoch_blocks(blocks, seed=3, epoch=0, shuffle=True)
    stream = np.concatenate([np.arange(a, b) for a, b in shuffled])
    for lo, hi in [(0, 28), (5, 17), (0, 0), (27, 28)]:
        segs = order.segments(shuffled, (lo, hi))
        got = np.concatenate([np.arange(a, b) for a, b in segs]) if segs else np.empty(0)
        np.testing.assert_array_equal(got, stream[lo:hi])
    assert not np.array_equal(order.epoch_blocks(blocks, 3, 1, True), shuffled)
    np.testing.assert_array_equal(order.epoch_blocks(blocks, 3, 0, True), shuffled)


def _run(segments, capacity, rng):
    buffer = order.ShuffleBuffer(segments, capacity, rng)
    held, out, most = set(), [], 0
    for event in buffer.events():
        if isinstance(event, order.Load):
            assert not held & set(event.slots.tolist())  # never overwrites a row still in the buffer
            held |= set(event.slots.tolist())
            most = max(most, len(held))
        else:
            out += buffer.slot_row[event.slots].tolist()
            held -= set(event.slots.tolist())
    return out, most


def test_shuffle_buffer_emits_every_row_once_within_its_bound():
    segments = [(0, 8), (30, 38), (8, 16), (50, 53), (16, 24)]
    rows = [r for a, b in segments for r in range(a, b)]
    out, most = _run(segments, 10, np.random.default_rng(0))
    assert sorted(out) == sorted(rows) and out != rows
    assert most <= 10 + 8
    assert _run(segments, 10, None)[0] == rows  # no rng: stream order
    assert _run(segments, 0, None)[0] == rows
    again, _ = _run(segments, 10, np.random.default_rng(0))
    assert again == out
