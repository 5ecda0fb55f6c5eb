"""The sample stream and each step's micro-batch layout."""

import numpy as np
import pytest

from lbsearch.spec.plan import plan_batch
from lbsearch.trial.batching import sample_stream, step_micro_batches


def test_sample_stream_is_epochs_of_permutations():
    s = sample_stream(10, 4, 5, seed=0)
    assert s.shape == (5, 4)
    flat = s.ravel()
    assert sorted(flat[:10]) == list(range(10))  # first epoch: each sample once
    assert len(set(flat[10:20])) == 10
    assert np.array_equal(s, sample_stream(10, 4, 5, seed=0))
    assert not np.array_equal(s, sample_stream(10, 4, 5, seed=1))


def test_sample_stream_order_does_not_depend_on_the_split():
    # the stream depends on (seed, B) only: micro-batching and ranks slice it later
    a = sample_stream(100, 32, 3, seed=3)
    assert np.array_equal(a[:, :16], sample_stream(100, 32, 3, seed=3)[:, :16])


@pytest.mark.parametrize("procs, limit, head", [(1, 16, 0), (1, 16, 2), (1, 24, 1), (2, 16, 0), (4, 8, 0)])
def test_step_micro_batches_cover_the_step_once_sorted_within_random_parts(procs, limit, head):
    lengths = np.random.default_rng(0).integers(1, 64, size=500)
    step = sample_stream(500, 96, 1, seed=2)[0]
    plan = plan_batch(96, procs, limit)
    per_rank = [step_micro_batches(step, lengths, plan, r, head) for r in range(procs)]
    assert sorted(np.concatenate([np.concatenate(m) for m in per_rank])) == sorted(step)  # every sample once
    for rank, micro in enumerate(per_rank):
        assert len(micro) == plan.accumulation and all(len(m) == plan.micro_batch for m in micro)
        share = step[rank * 96 // procs : (rank + 1) * 96 // procs]  # a contiguous, hence random, share
        assert sorted(np.concatenate(micro)) == sorted(share)
        cut = head * plan.micro_batch
        parts = [np.concatenate(micro)[:cut], np.concatenate(micro)[cut:]]
        assert sorted(parts[0]) == sorted(share[:cut])  # the head: the share's first samples, a random subset
        assert all(np.all(np.diff(lengths[p]) >= 0) for p in parts if len(p))  # each part sorted by length
