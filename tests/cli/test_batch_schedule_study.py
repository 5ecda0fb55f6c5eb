"""A batch schedule searched as a study dimension through the real CLI on the tiny study: each trial's plan and B over
training in MLflow (``plan.batch_schedule``, ``train/batch_size``, the re-planned split as ``plan/*``), and
``reproduce`` of the scheduled trial identical."""

from __future__ import annotations

from conftest import cli, journal_study, mlflow_client, run_cli

from lbsearch.spec import PLAN_ACCUMULATION, PROGRESS_STEP, TRAIN_BATCH_SIZE
from lbsearch.spec.registry import LR_SCALING
from lbsearch.study import RUN_ID

STEPWISE = f"32 from step 1 (lr 0.001), 64 from step 11 (lr {1e-3 * 2 ** LR_SCALING['sqrt']:.3g})"  # B doubles at 320, lr by sqrt
"""tiny.yaml's B 32 for 10 steps (320 samples), then 64 (the default lr rule) to the budget of 960: 10 more steps."""


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_study_searches_the_schedule_and_mlflow_shows_each_trial_s_b(tmp_path, specs):
    exp = specs / "tiny.yaml"
    exp.write_text(exp.read_text().replace("clip_norm: 1.0}", "clip_norm: 1.0, batch_schedule: {at_samples: [320], factor: 2, lr_scaling: sqrt}}"))
    study = specs / "tiny_study.yaml"
    study.write_text(study.read_text().split("search_space:")[0].replace("n_trials: 3", "n_trials: 2") +
                     "search_space:\n  train.batch_schedule.kind: {type: categorical, choices: [constant, stepwise]}\n"
                     "sampler: {name: grid, seed: 0}\npruner: {name: none}\n")
    proc = run_cli("run", str(study), cwd=tmp_path, check=True)
    root = tmp_path / "mlruns"
    trials = {t.params["train.batch_schedule.kind"]: t for t in journal_study(root, "tiny-study").get_trials()}
    assert sorted(trials) == ["constant", "stepwise"] and all(t.state.name == "COMPLETE" for t in trials.values()), proc.stdout
    assert trials["constant"].user_attrs["samples"] == 960 and trials["stepwise"].user_attrs["samples"] == 960
    client = mlflow_client(root)
    scheduled, constant = (client.get_run(trials[k].user_attrs[RUN_ID]) for k in ("stepwise", "constant"))
    assert scheduled.data.params["plan.batch_schedule"] == STEPWISE and "plan.batch_schedule" not in constant.data.params
    sizes = _history(client, scheduled.info.run_id, TRAIN_BATCH_SIZE)
    assert sizes == [(32 * s, 32.0) for s in range(1, 11)] + [(320 + 64 * s, 64.0) for s in range(1, 11)]
    assert _history(client, scheduled.info.run_id, PLAN_ACCUMULATION) == [(320, 4.0)]  # micro-batch 16: 2 at B 32, 4 at 64
    assert _history(client, scheduled.info.run_id, PROGRESS_STEP)[-1] == (960, 20.0)
    assert not _history(client, constant.info.run_id, TRAIN_BATCH_SIZE)
    number = trials["stepwise"].number
    again = cli("reproduce", "tiny-study", "--trial", str(number), cwd=tmp_path)
    assert again.returncode == 0 and f"[reproduce {number}] reproduced: metrics identical" in again.stdout, again.stdout + again.stderr
