"""The HF Trainer adapter (``lbsearch.hf``): a 3-trial study of the Trainer example on the tiny model,
one trial pruned and its reason in MLflow; B reaches the Trainer as its own batch arguments; reproduce exact on CPU."""

from __future__ import annotations

from conftest import SPECS, journal_study, mlflow_client, run_cli
from optuna.trial import TrialState

from lbsearch.spec import EVAL, PROGRESS_SAMPLES, TEST, TRAIN_LOSS, TRAIN_LR, VAL
from lbsearch.spec.load import load_study
from lbsearch.spec.session import Session
from lbsearch.study import RUN_ID
from lbsearch.study.storage import open_study
from lbsearch.tracking import REASON, STATE


def test_a_trainer_study_with_one_pruned_trial(tmp_path):
    spec = SPECS / "tiny_trainer_study.yaml"
    cfg, _ = load_study(spec)
    study = open_study(Session(root=tmp_path / "mlruns"), cfg)
    for lr in (3e-3, 2e-3, 1e-7):  # good, good, hopeless (pruned at the first evaluation)
        study.enqueue_trial({"optimizer.lr": lr})
    proc = run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "tiny-trainer").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED], proc.stdout
    assert [list(t.intermediate_values) for t in trials] == [[320, 640, 960], [320, 640, 960], [320]]
    assert trials[2].user_attrs["reason"] == "pruned" and trials[2].user_attrs["samples"] == 320
    client = mlflow_client(tmp_path / "mlruns")
    pruned = client.get_run(trials[2].user_attrs[RUN_ID])
    assert pruned.data.tags[STATE] == "pruned" and pruned.data.tags[REASON] == "pruned"
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, EVAL + "loss")] == [320]  # samples seen
    good = client.get_run(trials[0].user_attrs[RUN_ID])
    # B = 32 reached the Trainer as per_device_train_batch_size 16 x gradient_accumulation_steps 2 x 1 process
    assert good.data.tags["plan.micro_batch"] == "16" and good.data.tags["plan.accumulation"] == "2"
    assert [m.value for m in client.get_metric_history(good.info.run_id, PROGRESS_SAMPLES)][-1] == 960
    assert {VAL + "loss", TEST + "loss", TRAIN_LOSS, TRAIN_LR} <= set(good.data.metrics)
    again = run_cli("reproduce", "tiny-trainer", "--trial", "0", cwd=tmp_path)  # the seeded script re-runs to the same numbers on CPU
    assert again.returncode == 0 and "reproduced: metrics identical" in again.stdout, again.stdout
