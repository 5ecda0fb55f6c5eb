"""Rank 0's metric rows: their step is the data seen (samples, tokens for a language model), so
MLflow's charts line trials of different batch sizes up at equal data."""

from __future__ import annotations

import pytest

from lbsearch.link import Reporter
from lbsearch.spec.protocol import WorkerSpec, parse_message


@pytest.mark.parametrize(("experiment", "step"), [({"task": "single_label", "data": {"max_length": 48}, "train": {}}, 64),
                                                  ({"task": "causal_lm", "data": {"max_length": 128}, "train": {}}, 64 * 128)])
def test_metric_rows_are_at_samples_seen_and_tokens_for_a_language_model(capsys, experiment, step):
    spec = WorkerSpec(experiment=experiment, data_path="x", num_labels=2, pad_id=0, vocab_size=10, tracking=True)
    rep = Reporter(spec, is_main=True)
    rep.metrics({"eval/loss": 0.5, "progress/step": 2}, samples=64)  # B = 32, after optimizer step 2
    rep.flush()
    (line,) = capsys.readouterr().out.splitlines()
    kind, rows = parse_message(line)
    assert kind == "metrics" and [(k, v, s) for k, v, _, s in rows] == [("eval/loss", 0.5, step), ("progress/step", 2.0, step)]
