"""The orchestrator <-> trial process exchange: spec in, marked lines during, result out."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from lbsearch.link.reporter import Reporter
from lbsearch.spec import DIVERGED_REASON, RESULT_JSON, TRAIN_LOSS
from lbsearch.spec.protocol import TrialResult, WorkerSpec, message, parse_message, read_result, write_result


def test_messages_round_trip_and_plain_lines_are_not_messages():
    rows = [[TRAIN_LOSS, 0.5, 1, 3]]
    assert parse_message(message("metrics", rows)) == ("metrics", rows)
    assert parse_message(message("plan", {"micro_batch": 4})) == ("plan", {"micro_batch": 4})
    assert parse_message("samples 320/960 loss 0.69") is None


def test_result_is_written_atomically_and_typed(tmp_path):
    path = tmp_path / RESULT_JSON
    write_result(path, TrialResult(state="pruned", reason=DIVERGED_REASON, steps=3, samples=96))
    assert read_result(path) == TrialResult(state="pruned", reason=DIVERGED_REASON, steps=3, samples=96)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValidationError):
        TrialResult(state="exploded")


def test_reporter_sends_only_finite_metrics_and_only_from_rank_0(capsys):
    spec = WorkerSpec(experiment={"train": {}}, data_path="x", num_labels=2, pad_id=0, vocab_size=10, tracking=True)
    main = Reporter(spec, is_main=True)
    main.metrics({"a": 1.0, "b": float("nan"), "c": None}, samples=2)
    main.flush()
    Reporter(spec, is_main=False).metrics({"a": 1.0}, samples=2)
    (line,) = capsys.readouterr().out.splitlines()
    kind, rows = parse_message(line)
    assert kind == "metrics" and [(k, v, s) for k, v, _, s in rows] == [("a", 1.0, 2)]
    assert main.should_prune(0.5, 100) is False  # no Optuna trial: never pruned


def test_the_protocol_imports_neither_torch_nor_mlflow():
    code = "import sys, lbsearch.spec.protocol, lbsearch.spec.plan, lbsearch.study.views, lbsearch.study.storage; print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip() == "[]"


def test_an_undefined_metric_survives_the_result_file_as_nan(tmp_path):
    """AUROC of a split without both classes, or a correlation of constant predictions, is NaN."""
    import math

    write_result(tmp_path / RESULT_JSON, TrialResult(state="complete", validation={"auroc": math.nan, "accuracy": 0.5}))
    got = read_result(tmp_path / RESULT_JSON).validation
    assert math.isnan(got["auroc"]) and got["accuracy"] == 0.5
