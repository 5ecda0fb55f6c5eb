"""A study read back through MLflow's API alone, as someone without lbsearch would: the experiment's
kind and description, each trial's datasets and system metrics, its metrics at samples seen (the
trials of a batch ladder meet at equal data), the best trial's tag, the parent run's Optuna plots
and its batch-scaling report. The study runs on a terminal (a
pseudo-terminal, as ``script`` gives), so the live bars are checked on the same run."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest
from conftest import LBSEARCH, SPECS, _seed, cli, journal_study, mlflow_client
from optuna.trial import TrialState

from lbsearch.science import REPORT_HTML, SUMMARY_JSON
from lbsearch.science.report import BEST_PNG, LR_PNG, NOISE_PNG, STEPS_PNG
from lbsearch.spec import EVAL, GNS_B_SIMPLE, GNS_GRAD_SQ, GNS_TRACE_SIGMA, PROGRESS_SAMPLES, PROGRESS_STEP, REPORT_LR_ALPHA, REPORTS, TEST, TRAIN_LOSS, TRAIN_LR, VAL
from lbsearch.study import RUN_ID
from lbsearch.tracking import BEST_RUN_TAG, BEST_TAG, BEST_TRIAL_TAG, ROLE, TRIAL, TRIALS_CSV
from lbsearch.tracking.story import HISTORY_PNG, INTERMEDIATE_PNG, PARALLEL_PLOT_PNG, PARAM_IMPORTANCES_PNG


def _run_on_a_terminal(cwd, *args: str, timeout: float = 600) -> tuple[int, str]:
    _seed(Path(cwd) / "mlruns")
    master, slave = pty.openpty()
    proc = subprocess.Popen([*LBSEARCH, *args], cwd=cwd, stdout=slave, stderr=slave,
                            env=dict(os.environ, COLUMNS="200", TERM="xterm", PYTHONUNBUFFERED="1"))
    os.close(slave)
    out, deadline = b"", time.time() + timeout
    try:
        while time.time() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the CLI exited and closed the terminal
                break
            if not chunk:
                break
            out += chunk
        proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, out.decode(errors="replace")


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """tiny-ladder (B = 16, 32, 64, 960 samples each), with MLflow's default system-metrics interval. Its
    objective is the validation loss: the tiny model's accuracy is the majority class's in every trial,
    which leaves fANOVA no variance to share out (no importance plot). Every trial's loss reaches the
    target at the first evaluation (320 samples)."""
    cwd = tmp_path_factory.mktemp("story")
    code, screen = _run_on_a_terminal(cwd, "run", str(SPECS / "tiny_ladder.yaml"), "--set", "experiment.metric.name=loss",
                                      "--set", "experiment.metric.target=0.69")
    assert code == 0, screen[-4000:]
    client = mlflow_client(cwd / "mlruns")
    exp = client.get_experiment_by_name("tiny-ladder")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(ROLE) == "parent")
    trials = {int(r.data.tags[TRIAL]): r for r in runs if r.data.tags.get(ROLE) == "trial"}
    return cwd, screen, client, exp, parent, trials


def test_the_terminal_shows_live_study_and_trial_bars(ladder):
    _, screen, *_ = ladder
    assert "\x1b[" in screen  # drawn, not plain
    for shown in ("study tiny-ladder", "/3", "trials", "trial 2", "960/960", "samples", "samples/s", "complete 3 · pruned 0 · failed 0"):
        assert shown in screen, shown
    assert "[trial 0] samples 320/960" in screen  # the event lines still scroll above the bars


def test_experiment_kind_and_description(ladder):
    _, _, _, exp, _, _ = ladder
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    note = exp.tags["mlflow.note.content"]
    assert note.startswith("**lbsearch study `tiny-ladder`**: 3 trials of `tiny`") and "validation **loss** (minimize)" in note
    assert "batch ladder [16, 32, 64]" in note and "| `optimizer.lr` | float 0.001 .. 0.01 (log) |" in note
    assert f"metrics against the samples seen (tokens for a language model; the optimizer step is the metric `{PROGRESS_STEP}`)" in note


def test_each_trial_logs_its_datasets(ladder):
    _, _, client, _, parent, trials = ladder
    digest = parent.data.tags["data.digest"]  # the prepared data's digest
    for run in trials.values():
        inputs = {i.tags[0].value: i.dataset for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation", "test"}
        assert {d.name for d in inputs.values()} == {"rotten_tomatoes.train", "rotten_tomatoes.validation", "rotten_tomatoes.test"}
        assert {d.digest for d in inputs.values()} == {digest}
        assert inputs["training"].source_type == "local" and "rotten_tomatoes_corpus_full.csv.bz2" in inputs["training"].source
        assert '"num_rows": 200' in inputs["validation"].profile  # data.max_eval_samples of tiny.yaml


def test_each_trial_has_system_metrics(ladder):
    _, _, client, _, _, trials = ladder
    for run in trials.values():
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        memory = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
        assert cpu and memory, run.info.run_name  # a trial shorter than the 10 s interval still has its tail sample
        assert all(0 <= m.value <= 100 for m in cpu) and all(m.value > 0 for m in memory)
        assert max(m.timestamp for m in cpu) <= run.info.end_time + 1000  # the monitor stopped with the trial


def test_metrics_are_logged_at_samples_seen_and_the_optimizer_step_is_its_own_metric(ladder):
    """MLflow's step of every metric a trial logs is the samples it has seen, so trials of B = 16, 32 and
    64 meet at equal data on one chart; ``progress/step`` keeps the optimizer step."""
    _, _, client, _, _, trials = ladder
    evaluations = {}
    for run in trials.values():
        b, run_id = int(run.data.params["plan.batch_size"]), run.info.run_id
        hist = {k: sorted(client.get_metric_history(run_id, k), key=lambda m: m.step) for k in run.data.metrics if not k.startswith("system/")}
        data_axis = {s * b for s in range(1, 960 // b + 1)}  # samples seen after each optimizer step
        assert [(m.step, m.value) for m in hist[PROGRESS_STEP]] == [(s * b, s) for s in range(1, 960 // b + 1)]
        assert [(m.step, m.value) for m in hist[PROGRESS_SAMPLES]] == [(s * b, s * b) for s in range(1, 960 // b + 1)]
        assert [m.step for m in hist[TRAIN_LOSS]] == [m.step for m in hist[TRAIN_LR]] == sorted(data_axis)
        for key, ms in hist.items():
            assert {m.step for m in ms} <= data_axis, key
            assert len({m.step for m in ms}) == len(ms), f"{key}: one point per step, none logged twice"
        evaluations[b] = {k: [m.step for m in ms] for k, ms in hist.items() if k.startswith((EVAL, VAL, TEST))}
        assert [(m.step, m.value) for m in hist["steps_to_target"]] == [(320, 320 // b)]
    assert set(evaluations) == {16, 32, 64}
    for b, steps in evaluations.items():  # every B evaluates at the same samples seen: one chart compares them
        assert steps == evaluations[16] and steps[EVAL + "loss"] == steps[EVAL + "accuracy"] == [320, 640, 960], b
        assert steps[VAL + "loss"] == steps[TEST + "accuracy"] == [960], b


def test_the_best_trial_is_tagged_and_only_it(ladder):
    _, _, _, _, parent, trials = ladder
    best = int(parent.data.tags[BEST_TRIAL_TAG])
    assert [n for n, r in trials.items() if r.data.tags.get(BEST_TAG) == "true"] == [best]
    assert trials[best].info.run_id == parent.data.tags[BEST_RUN_TAG]


def test_the_parent_run_has_the_plots_the_table_and_the_report(ladder):
    cwd, screen, client, _, parent, _ = ladder
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {TRIALS_CSV, "plots", "report"} <= arts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {f"plots/{p}" for p in (HISTORY_PNG, PARALLEL_PLOT_PNG, INTERMEDIATE_PNG, "README.md")} <= plots
    readme = Path(client.download_artifacts(parent.info.run_id, "plots/README.md", str(cwd))).read_text()
    # three complete trials whose losses differ: fANOVA has variance to share out, so the plot is drawn
    assert f"plots/{PARAM_IMPORTANCES_PNG}" in plots, readme
    assert "- `param_importances.png`: How much of the variation in validation loss each parameter explains (fANOVA)." in readme
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{REPORT_HTML}", f"report/{SUMMARY_JSON}", f"report/{STEPS_PNG}"} <= report  # written without `lbsearch report`
    assert "[report tiny-ladder]" in screen and REPORT_LR_ALPHA in client.get_run(parent.info.run_id).data.metrics


def test_ladder_study_logs_noise_scale_and_writes_the_report(ladder):
    """Last in this file: ``report`` writes the report again and logs it to the parent run."""
    tmp_path = ladder[0]
    root = tmp_path / "mlruns"
    trials = journal_study(root, "tiny-ladder").get_trials()
    assert [t.params["train.batch_size"] for t in trials] == [16, 32, 64]  # trial i runs ladder[i mod 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    client = mlflow_client(root)
    for t in trials:
        hist = {k: client.get_metric_history(t.user_attrs[RUN_ID], k) for k in (GNS_B_SIMPLE, GNS_GRAD_SQ, GNS_TRACE_SIGMA)}
        if t.params["train.batch_size"] == 16:  # micro-batch limit 16: one batch size per step, nothing to measure
            assert not any(hist.values()) and "b_simple" not in t.user_attrs
            continue
        # accumulation 2 and 4: one value per evaluation. The unbiased |G|² estimate may be negative
        # while noise dominates (random init); B_simple is logged only where it is positive.
        assert len(hist[GNS_GRAD_SQ]) == len(hist[GNS_TRACE_SIGMA]) == 3
        assert all(m.value > 0 for m in hist[GNS_TRACE_SIGMA])
        positive = [g.value > 0 for g in hist[GNS_GRAD_SQ]]
        assert [m.step for m in hist[GNS_B_SIMPLE]] == [g.step for g, ok in zip(hist[GNS_GRAD_SQ], positive) if ok]
        if hist[GNS_B_SIMPLE]:
            assert t.user_attrs["b_simple"] == pytest.approx(hist[GNS_B_SIMPLE][-1].value)
            assert t.user_attrs["b_simple"] > 0

    out = cli("report", "tiny-ladder", cwd=tmp_path, check=True).stdout
    assert "lr exponent" in out and "B_simple" in out
    report = root / REPORTS / "tiny-ladder"
    summary = json.loads((report / SUMMARY_JSON).read_text())
    assert [r["batch_size"] for r in summary["per_batch_size"]] == [16, 32, 64]
    assert all(r["steps_to_target"] == 320 // r["batch_size"] for r in summary["per_batch_size"])  # first evaluation
    # 320 samples to target at every B is perfect scaling: the fit says B_crit lies beyond the ladder
    assert "above this range" in summary["steps_fit"]["error"]
    assert summary["lr_fit"]["ci_low"] <= summary["lr_fit"]["alpha"] <= summary["lr_fit"]["ci_high"]
    pngs = {p.name for p in report.glob("*.png")}
    assert {BEST_PNG, LR_PNG, STEPS_PNG, NOISE_PNG} <= pngs
    assert all((report / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    page = (report / REPORT_HTML).read_text()
    assert all(f'src="{p}"' in page for p in pngs) and "critical batch size" in page
    parent = client.search_runs([client.get_experiment_by_name("tiny-ladder").experiment_id], f"tags.`{ROLE}` = 'parent'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{p}" for p in pngs | {REPORT_HTML, SUMMARY_JSON}} <= logged
    assert parent.data.metrics[REPORT_LR_ALPHA] == pytest.approx(summary["lr_fit"]["alpha"])
