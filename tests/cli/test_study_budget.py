"""A study's ``budget:`` through the real CLI on the tiny study: it stops within one trial of it, ``status`` shows
what was used, an interrupted study resumed counts what it spent before (a re-run resumed from a checkpoint counts
only the rest), and a bad budget is one line and exit 2."""

from __future__ import annotations

import re
import signal

import pytest
from conftest import cli, journal_study, run_cli, start_cli, wait_for
from optuna.trial import TrialState

from lbsearch.spec import RETRY_OF_ATTR
from lbsearch.study import RESUMED_FROM

NO_PRUNING = ("pruner: {name: median, n_startup_trials: 1, n_warmup_samples: 0, protect_warmup: false}", "pruner: {name: none}")  # every trial trains its 960 samples


def _spec(specs, budget: str, n_trials: int):
    path = specs / "tiny_study.yaml"
    text = path.read_text().replace(*NO_PRUNING).replace("n_trials: 3", f"n_trials: {n_trials}\nbudget: {budget}")
    path.write_text(text)
    return path


def _samples(trials) -> list[int]:
    return [t.user_attrs.get("samples") for t in trials]


def test_the_study_stops_within_one_trial_of_its_budget_and_status_shows_it(tmp_path, specs):
    spec = _spec(specs, "{samples: 1500}", n_trials=5)
    proc = run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    # 960 after trial 0 (< 1500: trial 1 starts), 1920 after trial 1 (>= 1500: none starts), n_trials 5 never reached
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 and _samples(trials) == [960, 960], proc.stdout
    assert "[study tiny-study] budget: 1,920 / 1,500 samples (128%) reached: no new trial starts" in proc.stdout
    assert "[trial 2]" not in proc.stdout
    status = cli("status", "tiny-study", cwd=tmp_path, check=True).stdout
    assert status.rstrip().splitlines()[-1] == "budget: 1,920 / 1,500 samples (128%)", status
    again = run_cli("run", str(spec), cwd=tmp_path, check=True)  # spent: the same command starts nothing
    assert "reached: no new trial starts" in again.stdout and len(journal_study(tmp_path / "mlruns", "tiny-study").get_trials()) == 2


def test_a_resumed_study_counts_what_it_spent_before_and_a_resumed_trial_once(tmp_path, specs):
    """Budget 2100: after trial 0 (960), trial 1 interrupted and its re-run resumed from the checkpoint written on the
    way out (C samples), 1920 are spent: trial 3 runs and brings 2880. Counting the resumed part twice (1920 + C, C >= 320)
    would stop before trial 3; forgetting the first run's 960 + C would run a trial 4."""
    spec = _spec(specs, "{samples: 2100}", n_trials=8)
    proc = start_cli(tmp_path, "run", str(spec))
    wait_for(proc, "[trial 1] samples 320")
    proc.send_signal(signal.SIGINT)
    assert proc.communicate(timeout=60)[0] is not None and proc.returncode == 130
    before = cli("status", "tiny-study", cwd=tmp_path, check=True).stdout.rstrip().splitlines()[-1]
    used = int(re.fullmatch(r"budget: ([\d,]+) / 2,100 samples \(\d+%\)", before).group(1).replace(",", ""))
    assert 960 + 320 <= used < 1920, before  # trial 0, and trial 1 up to at least its evaluation at 320
    again = run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], again.stdout
    resumed = trials[2].user_attrs
    assert resumed[RETRY_OF_ATTR] == 1 and resumed[RESUMED_FROM["trial"]] == 1 and 320 <= resumed[RESUMED_FROM["samples"]] < 960
    assert resumed["samples"] == 960  # the whole curve, the checkpoint's part included: counted as 960 - C
    assert "[study tiny-study] budget: 2,880 / 2,100 samples (137%) reached: no new trial starts" in again.stdout
    assert "budget: 1,920 / 2,100 samples (91%)" in again.stdout  # the summary after the re-run: 960 + C + (960 - C)


@pytest.mark.parametrize("budget,where,message", [
    ("{samples: 0}", "budget.samples", "greater than or equal to 1"),
    ("{samples: 1000, device_hours: 2}", "budget", "set exactly one of `samples`, `tokens`, `device_hours`, got samples, device_hours"),
    ("{sample: 1000}", "budget.sample", "unknown key (did you mean `samples`?)"),
    ("1000", "budget", "valid dictionary"),
    ("{tokens: 100000}", "", "`budget.tokens` is for language-model tasks"),
])
def test_a_bad_budget_is_one_line_and_exit_2(tmp_path, specs, budget, where, message):
    spec = _spec(specs, budget, n_trials=3)
    proc = cli("run", str(spec), cwd=tmp_path)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert (f"tiny_study.yaml: {where}: " if where else "tiny_study.yaml: `budget.tokens`") in err, err
    assert message in err, err
    assert not (tmp_path / "mlruns" / "optuna.journal").exists()
