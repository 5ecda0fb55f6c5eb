"""``lbsearch compress`` end to end on a one-trial tiny study's kept model: every variant (int8, pruned, pruned
and fine-tuned) is a version of ``<study>-compressed`` in MLflow's registry with its metrics; the original is
evaluated exactly as its trial was; pruning leaves the asked share of zeros, through the fine-tune too; each
variant, loaded in a fresh process, reproduces its logged metrics exactly and serves ``predict --model``;
``--table`` marks the Pareto front; bad input is a one-line error, exit 2."""

from __future__ import annotations

import pytest
from conftest import SPECS, cli, journal_study, mlflow_client, run_cli

from lbsearch.cli.compress import INT8, ORIGINAL, pareto_variants, variant_name
from lbsearch.spec import SIZE_LINEAR_ZERO_SHARE, SIZE_PARAMS_NONZERO, SIZE_WEIGHT_BYTES, SPEED_LATENCY_MS_MEDIAN, SPEED_LATENCY_MS_P10, SPEED_LATENCY_MS_P90, SPEED_THROUGHPUT_PER_S, TEST, VAL
from lbsearch.tracking import MACHINE, ROLE, VARIANT, compressed_name

STUDY = "tiny-study"
SETS = ["--set", "n_trials=1", "--set", "pruner.name=none"]
SPARSITY, STEPS = 0.5, 2
PRUNED, TUNED = variant_name(SPARSITY), variant_name(SPARSITY, STEPS)
VARIANTS = [INT8, PRUNED, TUNED]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("compress")
    run_cli("run", str(SPECS / "tiny_study.yaml"), *SETS, cwd=cwd, check=True)
    proc = run_cli("compress", STUDY, "--sparsity", str(SPARSITY), "--finetune-steps", str(STEPS), "--repeats", "5", cwd=cwd, check=True)
    return cwd, cwd / "mlruns", proc


def _versions(root):
    client = mlflow_client(root)
    return {v.tags[VARIANT]: v for v in client.search_model_versions(f"name = '{compressed_name(STUDY)}'")}


def test_every_variant_is_a_registered_version_with_its_metrics(compressed):
    cwd, root, proc = compressed
    versions = _versions(root)
    assert sorted(versions) == sorted(VARIANTS)
    client = mlflow_client(root)
    for variant, v in versions.items():
        assert client.get_model_version_by_alias(compressed_name(STUDY), variant).version == v.version
        metrics = client.get_run(v.run_id).data.metrics
        for key in (VAL + "accuracy", TEST + "accuracy", SIZE_WEIGHT_BYTES, SIZE_PARAMS_NONZERO, SPEED_LATENCY_MS_MEDIAN,
                    SPEED_LATENCY_MS_P10, SPEED_LATENCY_MS_P90, SPEED_THROUGHPUT_PER_S):
            assert float(v.tags[key]) == pytest.approx(metrics[key], rel=1e-5), (variant, key)
        assert metrics[SPEED_LATENCY_MS_P10] <= metrics[SPEED_LATENCY_MS_MEDIAN] <= metrics[SPEED_LATENCY_MS_P90]
        assert "AMD" in client.get_run(v.run_id).data.tags[MACHINE] or "family" in client.get_run(v.run_id).data.tags[MACHINE]
    assert f"version {versions[INT8].version} of {compressed_name(STUDY)} (alias {INT8})" in proc.stdout
    assert "fine-tune step 2/2" in proc.stdout


def test_the_original_is_evaluated_as_its_trial_was_and_pruning_keeps_its_zeros(compressed):
    cwd, root, _ = compressed
    trial = journal_study(root, STUDY).best_trial
    client = mlflow_client(root)
    runs = {r.data.tags[VARIANT]: r.data.metrics for r in client.search_runs(
        [client.get_experiment_by_name(STUDY).experiment_id], f"tags.`{ROLE}` = 'compress'")}
    assert runs[ORIGINAL][VAL + "accuracy"] == trial.user_attrs["validation_accuracy"]  # fp32 trial: the same Evaluator, the same number
    assert runs[ORIGINAL][TEST + "accuracy"] == trial.user_attrs["test_accuracy"]
    assert runs[ORIGINAL][SIZE_LINEAR_ZERO_SHARE] < 0.01
    for variant in (PRUNED, TUNED):
        assert runs[variant][SIZE_LINEAR_ZERO_SHARE] == pytest.approx(SPARSITY, abs=1e-3)  # the fine-tune kept the zeros
        assert runs[variant][SIZE_PARAMS_NONZERO] < runs[ORIGINAL][SIZE_PARAMS_NONZERO]
    assert runs[TUNED][VAL + "loss"] != runs[PRUNED][VAL + "loss"]  # the fine-tune trained
    assert runs[INT8][SIZE_WEIGHT_BYTES] < runs[ORIGINAL][SIZE_WEIGHT_BYTES]


@pytest.mark.parametrize("variant", [INT8, TUNED])
def test_a_variant_reproduces_its_logged_metrics_in_a_fresh_process(compressed, variant):
    cwd, _, _ = compressed
    proc = run_cli("compress", STUDY, "--verify", variant, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"[verify {variant}] identical"
    assert "test accuracy: logged" in proc.stdout


def test_predict_serves_a_variant_by_alias_or_version(compressed):
    cwd, root, _ = compressed
    version = str(_versions(root)[INT8].version)
    by_alias = cli("predict", STUDY, "a warm, funny film", "--model", INT8, cwd=cwd, check=True).stdout.strip()
    label, p, text = by_alias.split("\t")
    assert label in ("fresh", "rotten") and 0.5 <= float(p) <= 1 and text == "a warm, funny film"
    assert cli("predict", STUDY, "a warm, funny film", "--model", version, cwd=cwd, check=True).stdout.strip() == by_alias


def test_the_table_marks_the_pareto_front(compressed):
    cwd, _, _ = compressed
    out = cli("compress", STUDY, "--table", cwd=cwd, check=True).stdout.splitlines()
    rows = {line.split()[0].rstrip("*"): line.split()[0].endswith("*") for line in out[2:-1]}
    assert sorted(rows) == sorted([ORIGINAL, *VARIANTS]) and any(rows.values())
    assert out[-1].startswith("measured on ")


def test_the_front_is_the_undominated_variants():
    rows = [{"variant": "a", VAL + "accuracy": 0.8, SIZE_WEIGHT_BYTES: 100, SPEED_LATENCY_MS_MEDIAN: 10.0},
            {"variant": "b", VAL + "accuracy": 0.8, SIZE_WEIGHT_BYTES: 25, SPEED_LATENCY_MS_MEDIAN: 8.0},  # beats a
            {"variant": "c", VAL + "accuracy": 0.7, SIZE_WEIGHT_BYTES: 25, SPEED_LATENCY_MS_MEDIAN: 5.0},
            {"variant": "d", VAL + "accuracy": 0.7, SIZE_WEIGHT_BYTES: 30, SPEED_LATENCY_MS_MEDIAN: 5.0}]  # c beats d
    assert pareto_variants(rows, "accuracy") == {"b", "c"}
    loss = [{**r, VAL + "loss": r[VAL + "accuracy"]} for r in rows]
    assert pareto_variants(loss, "loss", minimize=True) == {"c"}  # a lower loss is better: c now beats b too


@pytest.mark.parametrize("args,field", [(["no-such-study"], "study"), ([STUDY, "--sparsity", "1.2"], "--sparsity"),
                                        ([STUDY, "--sparsity", "0"], "--sparsity"), ([STUDY, "--finetune-steps", "-1"], "--finetune-steps")])
def test_bad_input_is_one_line_and_exit_2(compressed, args, field):
    cwd, root, _ = compressed
    before = len(_versions(root))
    proc = cli("compress", *args, cwd=cwd)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and field in proc.stderr, proc.stderr
    assert len(_versions(root)) == before  # nothing registered


def test_predict_with_an_unknown_variant_is_one_line_and_exit_2(compressed):
    cwd, _, _ = compressed
    proc = cli("predict", STUDY, "a film", "--model", "prune99", cwd=cwd)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--model" in proc.stderr and INT8 in proc.stderr
