"""The contracts, pydantic and YAML only: the experiment and study models, loading specs and
`--set` overrides, the trial plan, tasks, constraints, the Accelerate config file, the session
(where state lives), a trial's working folder, and the wire format between the orchestrator and a
trial process."""

from lbsearch.spec.accelerate_file import machines, read_config
from lbsearch.spec.branch import BRANCH_POINTS, BRANCH_TAGS, CBS_TAGS, RULES, SEARCHED, branch_experiment, branch_points_dir, keep_steps, kept_points, stream_start, tracking_home
from lbsearch.spec.config import (
    BATCH_KEY,
    CategoricalParam,
    DataConfig,
    ExperimentConfig,
    FloatParam,
    IntParam,
    LauncherConfig,
    ModelConfig,
    OptimizerConfig,
    PrunerConfig,
    SamplerConfig,
    SpecError,
    StudyConfig,
    TrainConfig,
)
from lbsearch.spec.constraints import Constraint, parse
from lbsearch.spec.distill import DISTILL_TASKS, DistillConfig, teacher_logits_file, teacher_study
from lbsearch.spec.executor import ExecutorConfig, bundles
from lbsearch.spec.load import CONFIG_ATTR, RUN_ID, apply_params, as_recorded, load_experiment, load_study, parse_set, validate_experiment
from lbsearch.spec.metric_names import (
    BEST_TEST,
    BEST_VALUE,
    CBS_CBS,
    CBS_CI_HIGH,
    CBS_CI_LOW,
    EVAL,
    GNS_B_SIMPLE,
    GNS_B_SIMPLE_TOKENS,
    GNS_GRAD_SQ,
    GNS_TRACE_SIGMA,
    PLAN_ACCUMULATION,
    PLAN_BATCH_SIZE,
    PLAN_LR,
    PLAN_MICRO_BATCH,
    PROGRESS_SAMPLES,
    PROGRESS_STEP,
    PROGRESS_TOKENS,
    REPORT_B_CRIT,
    REPORT_LR_ALPHA,
    REPORT_LR_ALPHA_CI_HIGH,
    REPORT_LR_ALPHA_CI_LOW,
    REPORT_S_MIN,
    SIZE_LINEAR_ZERO_SHARE,
    SIZE_PARAMS_NONZERO,
    SIZE_WEIGHT_BYTES,
    SPEED_LATENCY_MS_MEDIAN,
    SPEED_LATENCY_MS_P10,
    SPEED_LATENCY_MS_P90,
    SPEED_THROUGHPUT_PER_S,
    SPEED_THROUGHPUT_PER_S_P10,
    SPEED_THROUGHPUT_PER_S_P90,
    TEST,
    TRAIN_BATCH_SIZE,
    TRAIN_CLIP_FRAC,
    TRAIN_GRAD_NORM,
    TRAIN_LOSS,
    TRAIN_LOSS_HARD,
    TRAIN_LOSS_SOFT,
    TRAIN_LR,
    TRAIN_MFU,
    TRAIN_SAMPLES_PER_S,
    TRAIN_SKIPPED_STEPS,
    TRAIN_TOKENS_PER_S,
    TRIALS_COMPLETE,
    TRIALS_FAIL,
    TRIALS_PRUNED,
    VAL,
)
from lbsearch.spec.outcome import (
    DIVERGED_REASON,
    GPU_TOLERANCE,
    INTERRUPTED,
    PAUSED,
    PAUSED_STATE,
    PROMOTED_STATE,
    RETRYABLE,
    TRACKING_LOST,
    WORKER_DIED,
    TrackingOutage,
    diverged,
    failure,
    is_out_of_memory,
)
from lbsearch.spec.plan import BatchPlan, TrialPlan, make_plan
from lbsearch.spec.protocol import (
    CPUS,
    DISTILL_LOGITS,
    FLAG,
    GPUS,
    NOISE_SCALE,
    PACKING,
    START,
    THREADS,
    OptunaRef,
    TrialResult,
    WorkerSpec,
    message,
    metric_messages,
    parse_message,
    read_result,
    split_message,
    write_result,
)
from lbsearch.spec.registry import BUILTIN_DATASETS, BUILTIN_MODELS, DECAYING_SCHEDULES, SCHEDULES
from lbsearch.spec.script import PARAMS_ENV, PARAMS_JSON, SPEC_ENV, ScriptExperimentConfig, experiment_model, is_script, trial_values
from lbsearch.spec.session import Session, default_tracking_uri
from lbsearch.spec.tasks import LM_TASKS, sample_unit
from lbsearch.spec.workdir import (
    BEST_ALIAS,
    FOLDER,
    INFO,
    KEPT_FILE,
    PREFIX,
    REPORTS,
    RESULT_JSON,
    SPEC_JSON,
    TRIALS,
    adopt,
    best_uri,
    checkpoint_name,
    data_cache_dir,
    discard,
    fingerprint,
    latest,
    models_dir,
    registered_name,
    reports_dir,
    superseded,
    trial_model_dir,
    trials_dir,
)

__all__ = ['TRIALS_COMPLETE', 'TRIALS_PRUNED', 'TRIALS_FAIL', 'BEST_VALUE', 'BEST_TEST', 'REPORT_B_CRIT', 'REPORT_S_MIN', 'REPORT_LR_ALPHA', 'REPORT_LR_ALPHA_CI_LOW', 'REPORT_LR_ALPHA_CI_HIGH', 'TRAIN_LOSS', 'TRAIN_LOSS_HARD', 'TRAIN_LOSS_SOFT', 'TRAIN_LR', 'TRAIN_GRAD_NORM', 'TRAIN_CLIP_FRAC', 'TRAIN_BATCH_SIZE', 'TRAIN_SKIPPED_STEPS', 'TRAIN_SAMPLES_PER_S', 'TRAIN_TOKENS_PER_S', 'TRAIN_MFU', 'PROGRESS_SAMPLES', 'PROGRESS_STEP', 'PROGRESS_TOKENS', 'EVAL', 'VAL', 'TEST', 'SIZE_WEIGHT_BYTES', 'SIZE_PARAMS_NONZERO', 'SIZE_LINEAR_ZERO_SHARE', 'SPEED_LATENCY_MS_MEDIAN', 'SPEED_LATENCY_MS_P10', 'SPEED_LATENCY_MS_P90', 'SPEED_THROUGHPUT_PER_S', 'SPEED_THROUGHPUT_PER_S_P10', 'SPEED_THROUGHPUT_PER_S_P90', 'PLAN_BATCH_SIZE', 'PLAN_MICRO_BATCH', 'PLAN_ACCUMULATION', 'PLAN_LR', 'GNS_B_SIMPLE', 'GNS_B_SIMPLE_TOKENS', 'GNS_GRAD_SQ', 'GNS_TRACE_SIGMA', 'CBS_CBS', 'CBS_CI_LOW', 'CBS_CI_HIGH', 'DIVERGED_REASON', 'GPU_TOLERANCE', 'INTERRUPTED', 'PAUSED', 'PAUSED_STATE', 'PROMOTED_STATE', 'RETRYABLE', 'TRACKING_LOST', 'WORKER_DIED', 'TrackingOutage', 'diverged', 'failure', 'is_out_of_memory', 'BATCH_KEY', 'BUILTIN_DATASETS', 'BUILTIN_MODELS', 'DECAYING_SCHEDULES', 'SCHEDULES', 'CategoricalParam', 'DataConfig', 'ExperimentConfig', 'FloatParam', 'IntParam', 'LauncherConfig', 'ModelConfig', 'OptimizerConfig', 'PrunerConfig', 'SamplerConfig', 'SpecError', 'StudyConfig', 'TrainConfig', 'LM_TASKS', 'sample_unit', 'Constraint', 'parse', 'BatchPlan', 'TrialPlan', 'make_plan', 'CONFIG_ATTR', 'RUN_ID', 'apply_params', 'as_recorded', 'load_experiment', 'load_study', 'parse_set', 'validate_experiment', 'SPEC_ENV', 'PARAMS_ENV', 'PARAMS_JSON', 'ScriptExperimentConfig', 'experiment_model', 'is_script', 'trial_values', 'FLAG', 'START', 'CPUS', 'THREADS', 'GPUS', 'PACKING', 'NOISE_SCALE', 'DISTILL_LOGITS', 'OptunaRef', 'TrialResult', 'WorkerSpec', 'message', 'metric_messages', 'parse_message', 'read_result', 'split_message', 'write_result', 'FOLDER', 'BEST_ALIAS', 'best_uri', 'registered_name', 'INFO', 'KEPT_FILE', 'PREFIX', 'RESULT_JSON', 'SPEC_JSON', 'REPORTS', 'TRIALS', 'adopt', 'checkpoint_name', 'data_cache_dir', 'discard', 'fingerprint', 'latest', 'models_dir', 'reports_dir', 'superseded', 'trial_model_dir', 'trials_dir', 'Session', 'default_tracking_uri', 'machines', 'read_config', 'BRANCH_POINTS', 'BRANCH_TAGS', 'CBS_TAGS', 'RULES', 'SEARCHED', 'branch_experiment', 'branch_points_dir', 'keep_steps', 'kept_points', 'stream_start', 'tracking_home', 'ExecutorConfig', 'bundles', 'DISTILL_TASKS', 'DistillConfig', 'teacher_logits_file', 'teacher_study']
