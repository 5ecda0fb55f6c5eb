"""Bad input: one line naming file and field, exit code 2, nothing written under mlruns/."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, tree

from lbsearch.cli.main import main

# (id, file to edit, text replacements or extra YAML appended, --set items, expected "file: field" part, expected message part)
E, S = "tiny.yaml", "tiny_study.yaml"
_X, _SCRIPT = "experiment: tiny.yaml", "experiment: {{kind: script, name: x, script: {{{}}}, metric: {{name: loss}}{}}}"
CASES = [
    ("malformed-yaml", S, [("n_trials: 3", "n_trials: [3")], [], "tiny_study.yaml", "malformed YAML (line"),
    ("top-level-list", S, "REPLACE:- a\n- b\n", [], "tiny_study.yaml", "expected a mapping"),
    ("unknown-study-key", S, [("n_trials: 3", "n_trails: 3")], [], "tiny_study.yaml: n_trails", "unknown key (did you mean `n_trials`?); valid keys: name, experiment, n_trials"),
    ("unknown-experiment-key", E, [("batch_size: 32", "batchsize: 32")], [], "tiny.yaml: train.batchsize", "unknown key (did you mean `batch_size`?); valid keys: batch_size"),
    ("wrong-type", E, [("batch_size: 32", "batch_size: big")], [], "tiny.yaml: train.batch_size", "integer"),
    ("negative-lr", E, [("lr: 1.0e-3", "lr: -0.1")], [], "tiny.yaml: optimizer.lr", "greater than 0"),
    ("B-not-divisible", E, [("processes: 1", "processes: 3")], [], "tiny.yaml", "divisible by `launcher.processes`, got 32 and 3"),
    ("budget-below-B", E, [("budget_samples: 960", "budget_samples: 16")], [], "tiny.yaml: train", "budget_samples` must be >= `batch_size`"),
    ("zero-eval-every", E, [("eval_every_samples: 320", "eval_every_samples: 0")], [], "tiny.yaml: train.eval_every_samples", "greater than or equal to 1"),
    ("negative-clip", E, [("clip_norm: 1.0", "clip_norm: -1")], [], "tiny.yaml: train.clip_norm", "greater than 0"),
    ("both-warmups", E, [("warmup_fraction: 0.1", "warmup_fraction: 0.1, warmup_samples: 64")], [], "tiny.yaml: schedule", "only one of"),
    ("bad-precision", E, [('precision: "no"', "precision: fp8")], [], "tiny.yaml: launcher.precision", "'auto', 'no', 'bf16' or 'fp16'"),
    ("unreachable-target", E, [("name: accuracy", "name: accuracy\n  target: 1.5")], [], "tiny.yaml: metric", "`target` for accuracy must lie in (0, 1]"),
    ("wrong-direction", E, [("name: accuracy", "name: loss\n  direction: maximize")], [], "tiny.yaml: metric", "`loss` must be minimized"),
    ("max-length-too-small", E, [("max_length: 48", "max_length: 4")], [], "tiny.yaml: data.max_length", "greater than or equal to 8"),
    ("random-without-config", E, [("  config: {hidden_size", "  cfg: {hidden_size")], [], "tiny.yaml: model.cfg", "unknown key"),
    ("missing-data-file", E, [("source: rotten_tomatoes", "source: ./nope.csv")], [], "tiny.yaml: data.source", "file not found"),
    ("missing-model-folder", E, [("source: random", "source: ./no_model_here/")], [], "tiny.yaml: model.source", "model folder not found"),
    ("zero-trials", S, [("n_trials: 3", "n_trials: 0")], [], "tiny_study.yaml: n_trials", "greater than or equal to 1"),
    ("no-experiment", S, [("experiment: tiny.yaml", "")], [], "tiny_study.yaml: experiment", "required"),
    ("experiment-not-found", S, [("experiment: tiny.yaml", "experiment: nope.yaml")], [], "tiny_study.yaml: experiment", "experiment file not found"),
    ("empty-range", S, [("low: 1.0e-4, high: 3.0e-3", "low: 1.0e-3, high: 1.0e-3")], [], "tiny_study.yaml: search_space.optimizer.lr", "`low < high` must hold"),
    ("inverted-range", S, [("low: 1.0e-4, high: 3.0e-3", "low: 1.0e-2, high: 1.0e-3")], [], "tiny_study.yaml: search_space.optimizer.lr", "`low < high` must hold, got low=0.01, high=0.001"),
    ("log-range-at-zero", S, [("low: 1.0e-4, high: 3.0e-3", "low: 0.0, high: 3.0e-3")], [], "tiny_study.yaml: search_space.optimizer.lr", "log range needs `low > 0`"),
    ("not-a-field", S, [("optimizer.lr:", "optimizer.lrr:")], [], "tiny_study.yaml: search_space.optimizer.lrr", "not a field of the experiment"),
    ("bad-choice", S, [("choices: [16, 32, 64]", "choices: [0, 32]")], [], "tiny_study.yaml: search_space.train.batch_size", "value 0 gives an invalid experiment"),
    ("choice-not-divisible", S, [("choices: [16, 32, 64]", "choices: [16, 33]"), ("n_trials: 3", "n_trials: 3\nlauncher: {processes: 2}")], [], "tiny_study.yaml: search_space.train.batch_size", "value 33 gives an invalid experiment"),
    ("duplicate-choices", S, [("choices: [16, 32, 64]", "choices: [16, 16]")], [], "tiny_study.yaml: search_space.train.batch_size", "must be unique"),
    ("unknown-param-type", S, [("{type: float,", "{type: uniform,")], [], "tiny_study.yaml: search_space.optimizer.lr", "type"),
    ("unknown-sampler", S, [("name: tpe", "name: cmaes")], [], "tiny_study.yaml: sampler.name", "'tpe', 'random', 'grid', 'qmc', 'gp', 'gp_ordinal' or 'nsga2'"),
    ("unknown-pruner", S, [("name: median", "name: successive")], [], "tiny_study.yaml: pruner.name", "'median', 'percentile', 'patient', 'asha', 'asha_promote', 'hyperband' or 'none'"),
    ("hyperband-group-by", S, [("name: median", "name: hyperband, group_by: train.batch_size")], [], "tiny_study.yaml: pruner", "`group_by` works with the median, percentile, patient and asha pruners"),
    ("multi-objective-pruned", S, [("n_trials: 3", "n_trials: 3\nobjectives: [metric, wall_time]")], [], "tiny_study.yaml", "set `pruner: {name: none}`"),
    ("target-objective-no-target", S, [("n_trials: 3", "n_trials: 3\nobjectives: [samples_to_target]")], ["pruner.name=none"], "tiny_study.yaml", "needs `metric.target`"),
    ("constraint-unknown-name", S, [("n_trials: 3", "n_trials: 3\nconstraints: ['model.size < 3']")], [], "tiny_study.yaml", "names 'model.size', which is not searched"),
    ("grid-needs-categorical", S, [("name: tpe", "name: grid")], [], "tiny_study.yaml: search_space.optimizer.lr", "grid sampler needs `type: categorical`"),
    ("bad-study-name", S, [("name: tiny-study", "name: tiny study/x")], [], "tiny_study.yaml: name", "pattern"),
    ("bad-set-syntax", S, [], ["n_trials"], "--set", "expected key=value"),
    ("set-unknown-field", S, [], ["experiment.train.bogus=1"], "tiny.yaml: train.bogus", "unknown key"),
    ("set-wrong-type", S, [], ["n_trials=many"], "tiny_study.yaml: n_trials", "integer"),
    ("missing-text-column", E, [("source: rotten_tomatoes", "source: reviews.csv\n  text_column: review")], [], "data.text_column", "column 'review' not in"),
    ("labels-out-of-range", E, [("source: rotten_tomatoes", "files: {train: reviews.csv, validation: bad_labels.csv}")], [], "data.label_column", "validation has labels not in the train split: ['5']; list every class in `data.label_names`"),
    ("float-labels-not-regression", E, [("source: rotten_tomatoes", "source: scores.csv")], [], "data.label_column", "labels look like floats (0.096, 0.5, 0.731): set `task: regression`"),
    ("unknown-pair-column", E, [("source: rotten_tomatoes", "source: reviews.csv\n  text_pair_column: hypothesis")], [], "data.text_pair_column", "column 'hypothesis' not in"),
    ("multi-label-no-delimiter", E, [("source: rotten_tomatoes", "source: genres.csv"), ("name: tiny\n", "name: tiny\ntask: multi_label\n"), ("name: accuracy", "name: f1_micro")], [], "data.label_delimiter", "set `data.label_delimiter` to the character between labels"),
    ("decoder-without-pad-token", E, [("source: random", "source: random\n  model_type: gpt2\n  tokenizer: ./plain_tokenizer")], [], "model.tokenizer", "has no pad token and no eos token to pad with: set `model.pad_token`"),
    ("metric-not-of-task", E, [("name: tiny\n", "name: tiny\ntask: regression\n")], [], "tiny.yaml", "`metric.name: accuracy` is not a regression metric; regression reports loss, pearson, spearman, rmse, mae"),
    ("delimiter-not-multi-label", E, [("max_length: 48", "max_length: 48\n  label_delimiter: '|'")], [], "tiny.yaml", "`data.label_delimiter` splits multi-label strings: set `task: multi_label`"),
    ("unknown-builtin-model", E, [("source: random", "source: minilm-l12")], [], "model.source", "offline choices: `source: minilm-l6`"),
    ("unknown-builtin-dataset", E, [("source: rotten_tomatoes", "source: rotten_tomatos")], [], "data.source", "offline choices: `source: rotten_tomatoes`"),
    ("accelerate-config-not-found", E, [("processes: 1,", "processes: 1, accelerate_config: nope.yaml,")], [], "tiny.yaml: launcher.accelerate_config", "cannot read the accelerate config: No such file or directory"),
    ("accelerate-config-processes", E, [("processes: 1,", "processes: 1, accelerate_config: accelerate_fsdp.yaml,")], [], "tiny.yaml: launcher.processes", "`launcher.processes` must equal the accelerate config's `num_processes` (all machines), got 1 and 2"),
    ("tokens-for-classifier", E, [("budget_samples: 960,", "budget_samples: 960, budget_tokens: 96000,")], [], "tiny.yaml",
     "`train.budget_tokens` is for language-model tasks (causal_lm, masked_lm); task `single_label` counts samples"),
    ("corpus-for-classifier", E, [("source: rotten_tomatoes", "source: speeches")], [], "data.source",
     "`speeches` is a text corpus for `task: causal_lm` or `masked_lm`; classifiers: `rotten_tomatoes`"),
    ("budget-below-one-batch-of-tokens", E, [("name: tiny\n", "name: tiny\ntask: causal_lm\n"), ("name: accuracy", "name: loss"),
                                             ("budget_samples: 960,", "budget_tokens: 1000,")], [], "tiny.yaml",
     "`train.budget_tokens` must be >= one batch (32 x 48 tokens), got 1000"),
    ("text-pair-for-language-model", E, [("name: tiny\n", "name: tiny\ntask: masked_lm\n"), ("name: accuracy", "name: perplexity"),
                                         ("max_length: 48", "max_length: 48\n  text_pair_column: other")], [], "tiny.yaml",
     "a language model trains on text alone: remove `data.text_pair_column`"),
    ("machines-not-dividing", E, [("processes: 1,", "processes: 1, num_machines: 2,")], [], "tiny.yaml", "`launcher.processes` (on all machines) must be divisible by `launcher.num_machines`, got 1 and 2"),
    ("schedule-without-points", E, [("clip_norm: 1.0}", "clip_norm: 1.0, batch_schedule: {kind: stepwise}}")], [], "tiny.yaml: train.batch_schedule",
     "kind `stepwise` needs `at_samples` (or `at_tokens` for a language model): where B changes"),
    ("schedule-after-budget", E, [("clip_norm: 1.0}", "clip_norm: 1.0, batch_schedule: {kind: stepwise, at_samples: [2000]}}")], [], "tiny.yaml",
     "`train.batch_schedule` changes B at 2000 samples, at or after the budget (960)"),
    ("ramp-not-in-increments", E, [("clip_norm: 1.0}", "clip_norm: 1.0, batch_schedule: {kind: ramp, final_batch_size: 48, ramp_samples: 320}}")], [], "tiny.yaml",
     "`train.batch_schedule.final_batch_size` must be above `train.batch_size` (32) by a multiple of `increment` (32), got 48"),
    ("schedule-tokens-for-classifier", E, [("clip_norm: 1.0}", "clip_norm: 1.0, batch_schedule: {kind: stepwise, at_tokens: [3000]}}")], [], "tiny.yaml",
     "`train.batch_schedule.at_tokens` is for language-model tasks; this task counts samples"),
    ("schedule-for-script", S, [(_X, _SCRIPT.format("command: tiny.yaml", ", train: {batch_schedule: {kind: stepwise, at_samples: [320]}}"))], [],
     "tiny_study.yaml: experiment", "`train.batch_schedule` is for lbsearch's own training loop: a script trial runs one B"),
    # script trials (kind: script), inline in the study
    ("script-not-found", S, [(_X, _SCRIPT.format("command: nope.py", ""))], [], "tiny_study.yaml: experiment.script.command", "script not found"),
    ("script-without-kind", S, [(_X, _SCRIPT.format("command: tiny.yaml", "").replace("kind: script, ", ""))], [], "tiny_study.yaml: experiment.kind", "needs `kind: script`"),
    ("script-cannot-probe", S, [(_X, _SCRIPT.format("command: tiny.yaml", ", launcher: {max_micro_batch: null}"))], [], "tiny_study.yaml: experiment", "cannot probe its micro-batch: set `launcher.max_micro_batch`"),
    ("script-params-redefine", S, [(_X, _SCRIPT.format("command: tiny.yaml", ", params: {lr: 0.1}"))], [], "tiny_study.yaml: experiment", "`params` must not redefine the values lbsearch derives, got ['lr']"),
    ("script-unknown-value", S, [(_X, _SCRIPT.format("command: tiny.yaml, values: [sed]", ""))], [], "tiny_study.yaml: experiment", "`script.values` names ['sed']"),
    ("script-bad-params-as", S, [(_X, _SCRIPT.format("command: tiny.yaml, params_as: argv", ""))], [], "tiny_study.yaml: experiment.script.params_as", "'flags', 'env' or 'json'"),
]


TRAIN_CASES = {"corpus-for-classifier", "missing-text-column", "labels-out-of-range", "unknown-builtin-model", "unknown-builtin-dataset", "float-labels-not-regression",
               "unknown-pair-column", "multi-label-no-delimiter", "decoder-without-pad-token"}
"""Cases that reach the data or the tokenizer: run through ``lbsearch train``."""


def _plain_tokenizer(folder: Path) -> None:
    """A word-level tokenizer with neither a pad nor an eos token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "review": 1, "number": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(folder)


def _prepare(specs: Path, file: str, edit) -> None:
    (specs / "reviews.csv").write_text("text,label\n" + "".join(f"review number {i},{i % 2}\n" for i in range(40)))
    (specs / "bad_labels.csv").write_text("text,label\nfine,1\nodd,5\n")
    (specs / "scores.csv").write_text("text,label\n" + "".join(f"review number {i},{[0.096, 0.5, 0.731][i % 3]}\n" for i in range(40)))
    (specs / "genres.csv").write_text("text,label\n" + "".join(f"review number {i},{['drama', 'action|comedy'][i % 2]}\n" for i in range(40)))
    if "plain_tokenizer" in str(edit):
        _plain_tokenizer(specs / "plain_tokenizer")
    path = specs / file
    text = path.read_text()
    if isinstance(edit, str):
        text = edit.removeprefix("REPLACE:")
    else:
        for old, new in edit:
            assert old in text, f"test case edit {old!r} not found in {file}"
            text = text.replace(old, new)
    path.write_text(text)


def _located(where: str, file: str, specs: Path) -> str:
    """What the error line must begin with: the file at fault by the path it was given (``where``'s file,
    else the edited one), then the field where the case names one; or ``--set``."""
    if where.startswith("--set"):
        return f"lbsearch: error: {where}: "
    named, _, field = where.partition(": ") if where.split(": ")[0].endswith(".yaml") else (file, "", where)
    return f"lbsearch: error: {specs / named}: " + (f"{field}: " if field else "")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_one_line_exit_2_nothing_written(case, specs, tmp_path, capsys, monkeypatch):
    name, file, edit, sets, where, message = case
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _prepare(specs, file, edit)
    mlruns = tmp_path / "mlruns"
    argv = ["run", str(specs / S), "--mlruns", str(mlruns)] + [f"--set={s}" for s in sets]
    if name in TRAIN_CASES:
        argv = ["train", str(specs / E), "--mlruns", str(mlruns)]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(_located(where, file, specs)), err
    assert message in err, err
    assert tree(mlruns) == {}, "nothing may be written under mlruns/ for a bad spec"


def test_cli_subprocess_reports_bad_spec(specs, tmp_path):
    """The installed CLI (not just main()) exits 2 with one line on stderr."""
    _prepare(specs, S, [("n_trials: 3", "n_trials: -1")])
    proc = run_cli("run", str(specs / S), cwd=tmp_path, timeout=120, seed=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "tiny_study.yaml: n_trials" in proc.stderr
    assert not (tmp_path / "mlruns").exists()
