"""Distillation end to end (``distill:``): a tiny kept teacher (the best model of a 1-trial tiny-study), then a
2-trial study of a 1-layer student at two temperatures (the same weight, lr and B): both complete, the logged
loss is (1 - w) x hard + w x soft with a soft term, the temperature changes the soft term (and the loss) but not
the hard term of the first step, the teacher's logits are computed once and read by the second trial, the runs
carry the teacher's tags, ``reproduce`` gives identical numbers, the teacher run on the fly gives the cached soft
term; a teacher that cannot be used is a one-line spec error naming the file and the field, exit 2, with nothing
created, and one changed since the config ran is refused."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from conftest import SPECS, cli, journal_study, mlflow_client, run_cli, runs_of

from lbsearch.orchestrator.teacher import find_teacher
from lbsearch.spec import TRAIN_LOSS, TRAIN_LOSS_HARD, TRAIN_LOSS_SOFT, best_uri, data_cache_dir
from lbsearch.spec.config import SpecError
from lbsearch.spec.load import load_study, parse_set
from lbsearch.spec.session import Session
from lbsearch.study.storage import open_study
from lbsearch.tracking import DISTILL_LOGITS, TRIAL

STUDENT = SPECS / "tiny_distill_study.yaml"
TEMPERATURES = (0.1, 4.0)  # the tiny teacher is unsure (logit gaps ~0.1): only a low T leaves the near-T-free regime of T^2 KL
WEIGHT = 0.5


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("distill")
    root = cwd / "mlruns"
    # the teacher, with a pooled head: loading it must draw nothing from a student trial's generator (the trial that caches
    # its logits then trains as the one that reads them)
    run_cli("run", str(SPECS / "tiny_study.yaml"), "--set", "n_trials=1", "--set", "pruner.name=none", "--set", "experiment.model.pooling=mean",
            cwd=cwd, check=True)
    cfg, _ = load_study(STUDENT, {})
    s = open_study(Session(root=root), cfg)
    for t in TEMPERATURES:
        s.enqueue_trial({"distill.temperature": t, "distill.weight": WEIGHT})
    proc = run_cli("run", str(STUDENT), cwd=cwd, check=True)
    runs = {int(r.data.tags[TRIAL]): r for r in runs_of(root, "tiny-distill", role="trial")}
    return cwd, root, proc, runs


def _curve(root: Path, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(mlflow_client(root).get_metric_history(run_id, key), key=lambda m: m.step)]


def test_student_trials_complete_and_their_loss_holds_the_soft_term(studies):
    _, root, _, runs = studies
    assert [t.state.name for t in journal_study(root, "tiny-distill").get_trials()] == ["COMPLETE", "COMPLETE"]
    for r in runs.values():
        loss, hard, soft = (_curve(root, r.info.run_id, k) for k in (TRAIN_LOSS, TRAIN_LOSS_HARD, TRAIN_LOSS_SOFT))
        assert len(loss) == len(hard) == len(soft) == 30  # a row per optimizer step
        assert all(s > 0 for s in soft)
        assert all(math.isclose(total, (1 - WEIGHT) * h + WEIGHT * s, rel_tol=1e-5) for total, h, s in zip(loss, hard, soft))


def test_temperature_changes_the_soft_term_not_the_hard_term_of_the_first_step(studies):
    _, root, _, runs = studies
    first = {n: {k: _curve(root, r.info.run_id, k)[0] for k in (TRAIN_LOSS, TRAIN_LOSS_HARD, TRAIN_LOSS_SOFT)} for n, r in runs.items()}
    assert first[0][TRAIN_LOSS_HARD] == first[1][TRAIN_LOSS_HARD]  # the same student, batch and labels before any update
    assert first[0][TRAIN_LOSS_SOFT] != pytest.approx(first[1][TRAIN_LOSS_SOFT], rel=1e-3)
    change = first[0][TRAIN_LOSS] - first[1][TRAIN_LOSS]  # the loss moves by w x the soft term's change, and only by that
    assert change != 0 and change == pytest.approx(WEIGHT * (first[0][TRAIN_LOSS_SOFT] - first[1][TRAIN_LOSS_SOFT]), abs=1e-6)  # fp32 sums


def test_teacher_logits_are_computed_once_and_read_by_the_next_trial(studies):
    _, root, proc, runs = studies
    cached = list(data_cache_dir(root).glob("teacher-*.npy"))
    assert len(cached) == 1, cached
    assert runs[0].data.tags[DISTILL_LOGITS] == f"computed: {cached[0]}"
    assert runs[1].data.tags[DISTILL_LOGITS] == f"read: {cached[0]}"
    assert cached[0].stat().st_mtime * 1000 < runs[1].info.start_time  # not rewritten by the second trial
    assert proc.stdout.count("logits on 1200 training samples computed") == 1


def test_student_runs_carry_the_teacher_and_the_searched_values(studies):
    _, root, _, runs = studies
    kept = root / "models" / "tiny-study" / "trial-0"
    for n, r in runs.items():
        tags = r.data.tags
        assert tags["distill.teacher"] == best_uri("tiny-study") and tags["distill.teacher_trial"] == "tiny-study/0"
        assert tags["distill.teacher_model"] == str(kept)
        assert float(tags["distill.temperature"]) == TEMPERATURES[n] and float(tags["distill.weight"]) == WEIGHT
        assert float(r.data.params["distill.temperature"]) == TEMPERATURES[n]  # searched as any other param
        assert r.data.params["distill.teacher_version"] == tags["distill.teacher_version"]  # the saved config names the teacher that ran


def test_reproduce_of_a_student_trial_gives_the_same_numbers(studies):
    cwd, _, _, _ = studies
    proc = run_cli("reproduce", "tiny-distill", "--trial", "1", cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "reproduced: metrics identical" in proc.stdout


@pytest.mark.parametrize("teacher, why", [(best_uri("no-such-study"), "unknown study 'no-such-study'"),
                                          ("empty-teacher", "study 'empty-teacher' has no complete trial, so no kept model")])
def test_a_teacher_that_cannot_be_used_is_a_spec_error(studies, teacher, why):
    cwd, root, _, _ = studies
    cfg, _ = load_study(SPECS / "tiny_study.yaml", parse_set(["name=empty-teacher"]))
    open_study(Session(root=root), cfg)  # a study without a complete trial
    proc = cli("run", str(STUDENT), "--set", "name=tiny-distill-bad", "--set", f"experiment.distill.teacher={teacher}", cwd=cwd)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"lbsearch: error: {STUDENT}: experiment.distill.teacher: no teacher {teacher!r}: {why}")
    with pytest.raises(KeyError):
        journal_study(root, "tiny-distill-bad")  # nothing created


def test_distillation_refuses_a_task_without_class_distributions(studies):
    cwd, _, _, _ = studies
    proc = cli("run", str(STUDENT), "--set", "name=tiny-distill-bad", "--set", "experiment.task=regression",
               "--set", "experiment.metric.name=rmse", cwd=cwd)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"lbsearch: error: {STUDENT}: experiment.distill: distillation learns a distribution over "
                                                "classes: it is for task single_label, not `regression` (remove `distill:` or change the task)"]


def test_optuna_sees_the_temperature_as_a_searched_param(studies):
    _, root, _, _ = studies
    trials = journal_study(root, "tiny-distill").get_trials()
    assert [t.params["distill.temperature"] for t in trials] == list(TEMPERATURES)
    assert isinstance(trials[0].distributions["distill.temperature"], optuna.distributions.FloatDistribution)


def test_a_teacher_changed_since_the_config_ran_is_refused(studies):
    _, root, _, runs = studies
    cfg, _ = load_study(STUDENT, {})
    exp = cfg.experiment.model_copy(deep=True)
    exp.distill.teacher_version = runs[0].data.tags["distill.teacher_version"]
    assert find_teacher(Session(root=root), exp).version == exp.distill.teacher_version  # the same teacher: found
    exp.distill.teacher_version = "0123456789abcdef"
    with pytest.raises(SpecError, match=r"is version \w+ now; this config ran with version 0123456789abcdef") as err:
        find_teacher(Session(root=root), exp)
    assert err.value.field == "distill.teacher_version"


def test_on_the_fly_targets_give_the_cached_soft_term(studies):
    cwd, root, _, runs = studies
    sets = ["name=tiny-distill-otf", "n_trials=1", "experiment.distill.targets=on_the_fly"]
    cfg, _ = load_study(STUDENT, parse_set(sets))
    open_study(Session(root=root), cfg).enqueue_trial({"distill.temperature": TEMPERATURES[0], "distill.weight": WEIGHT})
    run_cli("run", str(STUDENT), *[f"--set={s}" for s in sets], cwd=cwd, check=True)
    (otf,) = runs_of(root, "tiny-distill-otf", role="trial")
    assert otf.data.tags[DISTILL_LOGITS] == "on the fly"
    for key in (TRAIN_LOSS_SOFT, TRAIN_LOSS):  # fp32 both ways: the teacher's logits on padded rows, once or at each step
        assert _curve(root, otf.info.run_id, key) == pytest.approx(_curve(root, runs[0].info.run_id, key), rel=1e-5)
    assert len(list(data_cache_dir(root).glob("teacher-*.npy"))) == 1  # nothing more cached
