"""Rank 0's metric rows: their step is the data seen (samples, tokens for a language model), so
MLflow's charts line trials of different batch sizes up at equal data."""

from __future__ import annotations

import pytest

from lbsearch.link import Reporter
from lbsearch.spec import EVAL, PROGRESS_STEP, TRAIN_LOSS
from lbsearch.spec.protocol import WorkerSpec, parse_message


@pytest.mark.parametrize(("experiment", "step"), [({"task": "single_label", "data": {"max_length": 48}, "train": {}}, 64),
                                                  ({"task": "causal_lm", "data": {"max_length": 128}, "train": {}}, 64 * 128)])
def test_metric_rows_are_at_samples_seen_and_tokens_for_a_language_model(capsys, experiment, step):
    spec = WorkerSpec(experiment=experiment, data_path="x", num_labels=2, pad_id=0, vocab_size=10, tracking=True)
    rep = Reporter(spec, is_main=True)
    rep.metrics({EVAL + "loss": 0.5, PROGRESS_STEP: 2}, samples=64)  # B = 32, after optimizer step 2
    rep.flush()
    (line,) = capsys.readouterr().out.splitlines()
    kind, rows = parse_message(line)
    assert kind == "metrics" and [(k, v, s) for k, v, _, s in rows] == [(EVAL + "loss", 0.5, step), (PROGRESS_STEP, 2.0, step)]


def test_sync_sends_the_buffered_rows_before_it_asks_for_them_in_mlflow(capsys):
    """A checkpoint's ``sync`` is one call: the rows still in the buffer go out first, so none is left behind the sync."""
    spec = WorkerSpec(experiment={"task": "single_label", "data": {"max_length": 48}, "train": {}}, data_path="x", num_labels=2, pad_id=0,
                      vocab_size=10, tracking=True)
    rep = Reporter(spec, is_main=True)
    rep.metrics({TRAIN_LOSS: 0.7}, samples=32)
    rep.sync()
    rep.sync()  # nothing buffered: the sync alone
    kinds = [parse_message(line)[0] for line in capsys.readouterr().out.splitlines()]
    assert kinds == ["metrics", "sync", "sync"]
