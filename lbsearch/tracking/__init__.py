"""MLflow: the tracker, what a study looks like in the UI (its description, datasets, the best
trial's tag, plots), and the kept and registered models. The only package that imports MLflow."""

from lbsearch.tracking.compressed import LOAD_AVERAGE, RECIPE, VARIANT, compressed_name, find_variant, record_variant, variant_dir, variant_rows
from lbsearch.tracking.kept import BEST_ALIAS, drop_best, keep_train_model, keep_trial_model, registered_name
from lbsearch.tracking.outbox import OUTBOX_FILE, Outbox, is_outage, outage_limit, replay_outboxes, save_outbox, wait_for_tracking
from lbsearch.tracking.story import BEST_TAG, CONFIG_JSON, KIND, LABELS_JSON, PARETO_CSV, PARETO_PNG, REPRODUCE_SH, TRIALS_CSV, VERSIONS_JSON, dataset_inputs, description, mark_best, study_plots
from lbsearch.tracking.tags import (
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    BEST_VALUE_TAG,
    CPUS,
    DISTILL_LOGITS,
    GPUS,
    MACHINE,
    MODEL,
    MODEL_VERSION,
    NOISE_SCALE,
    OOM_RETRIES,
    PACKING,
    PROMOTED_TO_RUN,
    PROMOTED_TO_TRIAL,
    RAY_GPUS,
    RAY_NODES,
    REASON,
    REPRODUCED,
    REPRODUCES,
    REPRODUCES_TRIAL,
    RESUMED_FROM_RUN,
    RESUMED_FROM_SAMPLES,
    RESUMED_FROM_STEP,
    RESUMED_FROM_TRIAL,
    RETRY_OF,
    ROLE,
    RUNG,
    RUNG_SAMPLES,
    START,
    STATE,
    THREADS,
    TOLERANCE,
    TRIAL,
    best_tags,
    distill_tags,
    end_tags,
    label_tags,
    oom_retry_tags,
    promoted_tags,
    reproduce_tags,
    reproduced_tags,
    resumed_tags,
    rung_tags,
    train_tags,
    trial_tags,
)
from lbsearch.tracking.tracker import MODEL_ID_TAG, Tracker, TrackingError, experiment_links, flatten, git_commit, tracker_for, versions

__all__ = ['BEST_TRIAL_TAG', 'BEST_VALUE_TAG', 'BEST_RUN_TAG', 'best_tags', 'DISTILL_LOGITS', 'START', 'CPUS', 'THREADS', 'GPUS', 'PACKING', 'NOISE_SCALE', 'RAY_GPUS', 'RAY_NODES', 'REASON', 'ROLE', 'STATE', 'TRIAL', 'RETRY_OF', 'RESUMED_FROM_TRIAL', 'RESUMED_FROM_STEP', 'RESUMED_FROM_SAMPLES', 'RESUMED_FROM_RUN', 'RUNG', 'RUNG_SAMPLES', 'PROMOTED_TO_TRIAL', 'PROMOTED_TO_RUN', 'OOM_RETRIES', 'REPRODUCES', 'REPRODUCES_TRIAL', 'REPRODUCED', 'TOLERANCE', 'MODEL', 'MODEL_VERSION', 'MACHINE', 'VARIANT', 'RECIPE', 'LOAD_AVERAGE', 'BEST_TAG', 'compressed_name', 'find_variant', 'record_variant', 'variant_dir', 'variant_rows', 'end_tags', 'label_tags', 'oom_retry_tags', 'promoted_tags', 'rung_tags', 'reproduce_tags', 'reproduced_tags', 'resumed_tags', 'train_tags', 'trial_tags', 'MODEL_ID_TAG', 'Tracker', 'TrackingError', 'experiment_links', 'flatten', 'git_commit', 'tracker_for', 'versions', 'KIND', 'PARETO_CSV', 'PARETO_PNG', 'TRIALS_CSV', 'CONFIG_JSON', 'REPRODUCE_SH', 'VERSIONS_JSON', 'LABELS_JSON', 'dataset_inputs', 'description', 'mark_best', 'study_plots', 'BEST_ALIAS', 'drop_best', 'keep_train_model', 'keep_trial_model', 'registered_name', 'OUTBOX_FILE', 'Outbox', 'is_outage', 'outage_limit', 'replay_outboxes', 'save_outbox', 'wait_for_tracking', 'distill_tags']
