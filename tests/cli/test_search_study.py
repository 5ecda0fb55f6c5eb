"""Search beyond one objective, end to end through the CLI on the tiny model: a Pareto front, ASHA
and Hyperband in samples, a resumed study that never repeats its draws, warm start and constraints.
(Workers started together never repeat each other: tests/cli/test_robustness.py.)"""

from __future__ import annotations

from conftest import SPECS, cli, journal_study, mlflow_client, run_cli, runs_of
from optuna.trial import TrialState

from lbsearch.spec import TRIALS
from lbsearch.spec.load import load_study, parse_set
from lbsearch.spec.session import Session
from lbsearch.study.storage import open_study
from lbsearch.tracking import PARETO_CSV, PARETO_DIR, PARETO_PNG, PARETO_TRIALS_TAG, TRIAL

QUICK = ["--set=experiment.train.budget_samples=320", "--set=experiment.train.eval_every_samples=160"]
LOSS = ["--set=experiment.metric.name=loss"]


def _enqueue(tmp_path, spec, sets, *params):
    cfg, _ = load_study(spec, parse_set([s.removeprefix("--set=") for s in sets]))
    study = open_study(Session(root=tmp_path / "mlruns"), cfg)
    for p in params:
        study.enqueue_trial(p)


def test_two_objective_study_front_in_best_and_on_the_parent_run(tmp_path):
    sets = [*LOSS, "--set=experiment.metric.target=0.69", "--set=objectives=[metric, samples_to_target]", "--set=pruner.name=none",
            "--set=n_trials=3", "--set=search_space.train.batch_size.choices=[16, 32]"]
    _enqueue(tmp_path, SPECS / "tiny_study.yaml", sets, {"train.batch_size": 16, "optimizer.lr": 3e-3}, {"train.batch_size": 32, "optimizer.lr": 1e-4})
    run_cli("run", str(SPECS / "tiny_study.yaml"), *sets, cwd=tmp_path, check=True)
    study = journal_study(tmp_path / "mlruns", "tiny-study")
    assert len(study.directions) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
    front = sorted(t.number for t in study.best_trials)
    best = cli("best", "tiny-study", cwd=tmp_path, check=True).stdout
    assert f"Pareto front of {len(front)} trials over metric, samples_to_target" in best
    picked = cli("best", "tiny-study", "--pick", "samples_to_target", cwd=tmp_path, check=True).stdout
    fastest = min(study.best_trials, key=lambda t: (t.values[1], t.values[0], t.number))
    assert f"trial      {fastest.number}\n" in picked and f"lbsearch reproduce tiny-study --trial {fastest.number}" in picked
    bad = cli("best", "tiny-study", "--pick", "speed", cwd=tmp_path)
    assert bad.returncode == 2 and "--pick must be one of the study's objectives: metric, samples_to_target" in bad.stderr
    (parent,) = runs_of(tmp_path / "mlruns", "tiny-study", "parent")
    client = mlflow_client(tmp_path / "mlruns")
    table = client.download_artifacts(parent.info.run_id, PARETO_CSV, str(tmp_path))
    lines = open(table).read().splitlines()
    assert lines[0].startswith("trial,state,reason,metric,samples_to_target") and sorted(int(r.split(",")[0]) for r in lines[1:]) == front
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, PARETO_DIR)}
    assert (f"{PARETO_DIR}/{PARETO_PNG}" in plots) == (len(front) >= 2)
    assert sorted(int(n) for n in parent.data.tags[PARETO_TRIALS_TAG].split(",")) == front


def test_a_resumed_study_does_not_draw_its_first_trial_again(tmp_path):
    sets = ["--set=n_trials=4", "--set=sampler.n_startup_trials=4", *QUICK]
    run_cli("run", str(SPECS / "tiny_study.yaml"), *sets, "--max-trials", "1", cwd=tmp_path, check=True)
    run_cli("run", str(SPECS / "tiny_study.yaml"), *sets, cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "tiny-study").trials
    assert len(trials) == 4 and len({t.params["optimizer.lr"] for t in trials}) == 4
    # and the draws are the study seed's: the same study elsewhere makes the same first draws
    other = tmp_path / "again"
    other.mkdir()
    run_cli("run", str(SPECS / "tiny_study.yaml"), *sets, "--max-trials", "2", cwd=other, check=True)
    again = journal_study(other / "mlruns", "tiny-study").trials
    assert [t.params for t in again] == [t.params for t in trials[:2]]


def test_asha_prunes_in_samples_and_honours_group_by(tmp_path):
    sets = [*LOSS, "--set=pruner.name=asha", "--set=pruner.group_by=train.batch_size", "--set=n_trials=3"]
    good, bad = 3e-3, 1e-4
    _enqueue(tmp_path, SPECS / "tiny_study.yaml", sets, {"train.batch_size": 32, "optimizer.lr": good},
             {"train.batch_size": 32, "optimizer.lr": bad}, {"train.batch_size": 16, "optimizer.lr": bad})
    run_cli("run", str(SPECS / "tiny_study.yaml"), *sets, cwd=tmp_path, check=True)
    t = journal_study(tmp_path / "mlruns", "tiny-study").trials
    assert [x.state for x in t] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert list(t[1].intermediate_values) == [320] and t[1].user_attrs["samples"] == 320  # the first rung, in samples
    assert list(t[2].intermediate_values) == [320, 640, 960]  # alone in the B=16 group: never compared with B=32


def test_hyperband_prunes_in_samples(tmp_path):
    # reduction factor 4 over 320..960 samples: one bracket, whose first rung is at 320 samples
    sets = [*LOSS, "--set=pruner.name=hyperband", "--set=pruner.reduction_factor=4", "--set=n_trials=2"]
    _enqueue(tmp_path, SPECS / "tiny_study.yaml", sets, {"train.batch_size": 32, "optimizer.lr": 3e-3}, {"train.batch_size": 32, "optimizer.lr": 1e-4})
    run_cli("run", str(SPECS / "tiny_study.yaml"), *sets, cwd=tmp_path, check=True)
    t = journal_study(tmp_path / "mlruns", "tiny-study").trials
    assert [x.state for x in t] == [TrialState.COMPLETE, TrialState.PRUNED] and list(t[1].intermediate_values) == [320]
    refused = run_cli("run", str(SPECS / "tiny_study.yaml"), *sets, "--set=pruner.group_by=train.batch_size", cwd=tmp_path)
    assert refused.returncode == 2 and "`group_by` works with the median, percentile, patient and asha pruners, not `hyperband`" in refused.stderr


def test_warm_start_runs_the_best_first_and_constraints_never_launch(tmp_path, specs):
    first = [*LOSS, "--set=n_trials=3", *QUICK]
    run_cli("run", str(specs / "tiny_study.yaml"), *first, cwd=tmp_path, check=True)
    done = journal_study(tmp_path / "mlruns", "tiny-study").trials
    top2 = sorted((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value)[:2]
    spec = specs / "warm.yaml"
    spec.write_text((specs / "tiny_study.yaml").read_text().replace("name: tiny-study", "name: tiny-warm")
                    + "warm_start: {study: tiny-study, top_k: 2}\nconstraints: ['optimizer.lr <= 2.0e-3']\n")
    second = [*LOSS, "--set=n_trials=3", *QUICK]
    _enqueue(tmp_path, spec, second)  # creates the study (empty): warm start happens at its first ask
    study = journal_study(tmp_path / "mlruns", "tiny-warm")
    study.enqueue_trial({"train.batch_size": 16, "optimizer.lr": 2.9e-3})  # would violate the constraint ...
    proc = run_cli("run", str(spec), *second, cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "tiny-warm").trials
    assert trials[0].state == TrialState.PRUNED and trials[0].user_attrs["reason"] == "constraint: optimizer.lr <= 2.0e-3"
    assert "[trial 0] skipped: violates constraint" in proc.stdout and "[trial 0] start" not in proc.stdout
    assert not list((tmp_path / "mlruns" / TRIALS / "tiny-warm").glob("0000-*"))  # ... and never launched a process
    assert 0 not in {int(r.data.tags[TRIAL]) for r in runs_of(tmp_path / "mlruns", "tiny-warm", "trial")}
    # the enqueued trial was asked first; the warm start's two follow, then one sampled trial
    assert [t.params for t in trials[1:3]] == [t.params for t in top2]
    assert sum(t.state != TrialState.PRUNED or "constraint" not in t.user_attrs.get("reason", "") for t in trials) == 3
