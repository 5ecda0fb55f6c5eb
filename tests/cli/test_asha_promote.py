"""Successive halving with promotion (``pruner: asha_promote``) through the real CLI on the tiny study: every trial is
paused at its rung with its checkpoint; a study interrupted (SIGINT) with a paused trial leaves nothing RUNNING in Optuna
or MLflow and ``status`` shows the trial ``paused``; the next ``lbsearch run`` promotes it and resumes it from its
checkpoint, and the trial that completes equals the same params run through without a pause, bit for bit (CPU); the
budget counts the samples of a promoted trial once."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import SPECS, cli, journal_study, mlflow_client, run_cli, runs_of, start_cli, wait_for
from optuna.trial import TrialState

from lbsearch.spec import EVAL, FOLDER, PAUSED, PAUSED_STATE, PREFIX, PROMOTED_STATE, RESUME_OF_ATTR, RETRY_OF_ATTR, RUNG_ATTR, TEST, TRAIN_LOSS, TRIALS, VAL, checkpoint_name
from lbsearch.study import RESUMED_FROM, RUN_ID, spent
from lbsearch.tracking import PROMOTED_TO_RUN, PROMOTED_TO_TRIAL, REASON, RESUMED_FROM_RUN, RUNG, RUNG_SAMPLES, STATE, TRIAL

# B = 32, 20 steps, an evaluation every 5 (160 samples); rungs at 160 and 320 samples (reduction factor 2), the budget 640
SETS = ["--set=n_trials=2", "--set=search_space.train.batch_size.choices=[32]", "--set=experiment.train.budget_samples=640",
        "--set=experiment.train.eval_every_samples=160"]
PROMOTE = [*SETS, "--set=pruner.name=asha_promote", "--set=pruner.reduction_factor=2", "--set=budget.samples=100000"]


def _history(root, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = mlflow_client(root)
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys if k.startswith((TRAIN_LOSS, EVAL, VAL, TEST))}


def _nothing_running(root, study: str, out: str = "") -> None:
    assert not [t.number for t in journal_study(root, study).get_trials() if t.state in (TrialState.RUNNING, TrialState.WAITING)], out
    assert not [r.info.run_name for r in runs_of(root, study) if r.info.status == "RUNNING"], out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study interrupted (SIGINT) while its second configuration starts, its first paused at rung 0; what it left;
    then the same command again, and the same two configurations run through without a pause (study ``through``)."""
    cwd = tmp_path_factory.mktemp("asha")
    spec, root = str(SPECS / "tiny_study.yaml"), cwd / "mlruns"
    proc = start_cli(cwd, "run", spec, *PROMOTE)
    seen = wait_for(proc, "[trial 1] start", timeout=300)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[0]
    left = {"code": proc.returncode, "out": "".join(seen) + rest, "table": cli("status", "tiny-study", cwd=cwd, check=True).stdout,
            "trials": journal_study(root, "tiny-study").get_trials(), "runs": {r.data.tags.get(TRIAL): r for r in runs_of(root, "tiny-study", "trial")},
            "checkpoints": sorted(p.name for p in root.glob(f"{TRIALS}/tiny-study/0000-*/{FOLDER}/{PREFIX}*"))}
    _nothing_running(root, "tiny-study", left["out"])
    again = run_cli("run", spec, *PROMOTE, cwd=cwd, check=True)
    run_cli("run", spec, *SETS, "--set=name=through", "--set=pruner.name=none", cwd=cwd, check=True)
    return {"cwd": cwd, "root": root, "left": left, "again": again.stdout}


def test_an_interrupted_study_leaves_its_paused_trial_paused_and_nothing_running(study):
    left = study["left"]
    assert left["code"] == 130, left["out"]
    assert "[trial 0] paused at rung 0 (160 samples)" in left["out"]
    first = left["trials"][0]
    assert (first.state, first.user_attrs["reason"], first.user_attrs[RUNG_ATTR], first.user_attrs["samples"]) == (TrialState.PRUNED, PAUSED, 0, 160)
    row = next(line for line in left["table"].splitlines() if line.split()[:2] == ["0", PAUSED_STATE])
    assert row.endswith("paused at rung 0 (160 samples)")
    run = left["runs"]["0"]
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in (STATE, REASON, RUNG, RUNG_SAMPLES)} == {
        STATE: PAUSED_STATE, REASON: PAUSED, RUNG: "0", RUNG_SAMPLES: "160"}
    assert left["checkpoints"] == [checkpoint_name(5)]  # kept for its promotion


def _root(t, by_number):
    while (parent := t.user_attrs.get(RETRY_OF_ATTR, t.user_attrs.get(RESUME_OF_ATTR))) is not None:
        t = by_number[parent]
    return t.number


def test_the_next_run_promotes_the_paused_trials_and_ends_with_nothing_running(study):
    root, out = study["root"], study["again"]
    trials = journal_study(root, "tiny-study").get_trials()
    by_number = {t.number: t for t in trials}
    (done,) = [t for t in trials if t.state == TrialState.COMPLETE]
    paused = [t for t in trials if t.user_attrs.get("reason") == PAUSED]
    winner = _root(done, by_number)
    # the configuration that ranks first at rung 0 goes on (a tie goes to the earlier one)
    a, b = trials[0].intermediate_values[160], next(t for t in paused if _root(t, by_number) != 0).intermediate_values[160]
    assert winner == (0 if a >= b else 1), out
    rows = {r["trial"]: r for r in json.loads(cli("status", "tiny-study", "--json", cwd=study["cwd"], check=True).stdout)}
    assert {t.number: rows[t.number]["state"] for t in paused} == {t.number: PROMOTED_STATE if _root(t, by_number) == winner else PAUSED_STATE for t in paused}
    assert sorted(t.user_attrs[RUNG_ATTR] for t in paused if _root(t, by_number) == winner) == [0, 1] and done.user_attrs[RUNG_ATTR] == 2
    if winner == 0:  # the trial paused before the interruption is resumed by the next run, from its checkpoint
        assert "[study tiny-study] trial 0 promoted (#1 of 2 at rung 0 (160 samples), in the top 1): it goes on from its checkpoint" in out
        assert "resumes trial 0 from its checkpoint at step 5 (160 samples)" in out
    assert "promoted (best paused at the highest rung 1 (320 samples), as no trial is complete)" in out
    _nothing_running(root, "tiny-study")
    runs = {r.info.run_id: r for r in runs_of(root, "tiny-study", "trial")}
    (last_pause,) = [t for t in paused if _root(t, by_number) == winner and t.user_attrs[RUNG_ATTR] == 1]
    paused_run = runs[last_pause.user_attrs[RUN_ID]]
    assert paused_run.data.tags[PROMOTED_TO_RUN] == done.user_attrs[RUN_ID] and paused_run.data.tags[PROMOTED_TO_TRIAL] == str(done.number)
    assert runs[done.user_attrs[RUN_ID]].data.tags[RESUMED_FROM_RUN] == paused_run.info.run_id
    assert len(list(root.glob(f"{TRIALS}/tiny-study/*/{FOLDER}"))) == 1  # only the paused trial that was not promoted keeps one


def test_a_promoted_trial_equals_the_same_trial_run_through_without_a_pause(study):
    root = study["root"]
    (done,) = journal_study(root, "tiny-study").get_trials(states=(TrialState.COMPLETE,))
    (through,) = [t for t in journal_study(root, "through").get_trials() if t.params == done.params]
    assert done.user_attrs[RESUMED_FROM["samples"]] == 320 and RESUMED_FROM["samples"] not in through.user_attrs
    mine, base = _history(root, done.user_attrs[RUN_ID]), _history(root, through.user_attrs[RUN_ID])
    assert len(base[TRAIN_LOSS]) == 20 and set(mine) == set(base)
    assert mine == base  # every step's loss and every evaluation, the parts before each pause copied into the last run
    assert done.intermediate_values == through.intermediate_values and done.value == through.value
    assert done.user_attrs["test_accuracy"] == through.user_attrs["test_accuracy"]


def test_the_budget_counts_a_promoted_trials_samples_once(study):
    study_ = journal_study(study["root"], "tiny-study")
    assert spent(study_, "samples") == 640 + 160  # the configuration run to its budget, the one paused at rung 0
    status = cli("status", "tiny-study", cwd=study["cwd"], check=True).stdout
    assert status.rstrip().splitlines()[-1] == "budget: 800 / 100,000 samples (1%)", status
