"""The names of the MLflow metrics lbsearch logs, each written here once: the trial process logs them
(``lbsearch.trial``, the trial API and the adapters of ``lbsearch.integrations``), the orchestrator, the terminal and
the tracker read some back, tests import them. A constant is named after its metric, upper-cased with ``/`` as ``_``
(``train/loss``: ``TRAIN_LOSS``); ``EVAL``, ``VAL`` and ``TEST`` are prefixes. Renaming a metric is its string here: the
constant may keep its name (``git grep -nw`` lists its users where it follows). Runs already stored keep the names they were logged under."""

from __future__ import annotations

__all__ = ["TRAIN_LOSS", "TRAIN_LOSS_HARD", "TRAIN_LOSS_SOFT", "TRAIN_LR", "TRAIN_GRAD_NORM", "TRAIN_CLIP_FRAC", "TRAIN_BATCH_SIZE",
           "TRAIN_SKIPPED_STEPS", "TRAIN_SAMPLES_PER_S", "TRAIN_TOKENS_PER_S", "TRAIN_MFU", "PROGRESS_SAMPLES", "PROGRESS_STEP",
           "PROGRESS_TOKENS", "EVAL", "VAL", "TEST", "SIZE_WEIGHT_BYTES", "SIZE_PARAMS_NONZERO", "SIZE_LINEAR_ZERO_SHARE", "SPEED_LATENCY_MS_MEDIAN", "SPEED_LATENCY_MS_P10", "SPEED_LATENCY_MS_P90",
           "SPEED_THROUGHPUT_PER_S", "SPEED_THROUGHPUT_PER_S_P10", "SPEED_THROUGHPUT_PER_S_P90", "PLAN_BATCH_SIZE", "PLAN_MICRO_BATCH", "PLAN_ACCUMULATION", "PLAN_LR",
           "GNS_B_SIMPLE", "GNS_B_SIMPLE_TOKENS", "GNS_GRAD_SQ", "GNS_TRACE_SIGMA", "CBS_CBS", "CBS_CI_LOW", "CBS_CI_HIGH",
           "TRIALS_COMPLETE", "TRIALS_PRUNED", "TRIALS_FAIL", "BEST_VALUE", "BEST_TEST", "REPORT_B_CRIT", "REPORT_S_MIN", "REPORT_LR_ALPHA",
           "REPORT_LR_ALPHA_CI_LOW", "REPORT_LR_ALPHA_CI_HIGH"]

TRAIN_LOSS = "train/loss"
"""The training loss at each logged optimizer step: what the live bar shows and the trial API checks for divergence
(``lbsearch.integrations.api``)."""
TRAIN_LOSS_HARD, TRAIN_LOSS_SOFT = "train/loss_hard", "train/loss_soft"
"""A distilled student's two losses: on the labels and on the teacher's logits (``lbsearch.trial.distill``)."""
TRAIN_LR, TRAIN_GRAD_NORM, TRAIN_CLIP_FRAC = "train/lr", "train/grad_norm", "train/clip_frac"
"""The learning rate, the gradient norm before clipping, and the share of the steps so far where clipping fired."""
TRAIN_BATCH_SIZE = "train/batch_size"
"""The effective batch of the phase a step is in (a batch schedule only)."""
TRAIN_SKIPPED_STEPS = "train/skipped_steps"
"""fp16: the optimizer steps the GradScaler skipped so far."""
TRAIN_SAMPLES_PER_S, TRAIN_TOKENS_PER_S, TRAIN_MFU = "train/samples_per_s", "train/tokens_per_s", "train/mfu"
"""Speed at each evaluation: samples and tokens a second, and the model FLOPs utilisation where the peak is known."""

PROGRESS_SAMPLES, PROGRESS_STEP, PROGRESS_TOKENS = "progress/samples", "progress/step", "progress/tokens"
"""How far a trial has come: samples seen (every metric's MLflow step), optimizer steps, and tokens (a language model).
A resumed trial's copied curves are cut at the step its checkpoint holds by ``PROGRESS_STEP`` (``lbsearch.tracking``)."""

EVAL = "eval/"
"""The prefix of the evaluation metrics: ``EVAL`` + a task metric's name (``lbsearch.spec.tasks``), e.g. ``eval/accuracy``."""
VAL, TEST = "val/", "test/"
"""The prefixes of a finished trial's (or a compressed variant's) metrics on the whole validation and test splits."""

SIZE_WEIGHT_BYTES, SIZE_PARAMS_NONZERO, SIZE_LINEAR_ZERO_SHARE = "size/weight_bytes", "size/params_nonzero", "size/linear_zero_share"
"""A compressed variant's size (``lbsearch compress``): its weight files' bytes, non-zero parameters, share of zeroed linear weights."""
SPEED_LATENCY_MS_MEDIAN, SPEED_LATENCY_MS_P10, SPEED_LATENCY_MS_P90 = "speed/latency_ms_median", "speed/latency_ms_p10", "speed/latency_ms_p90"
SPEED_THROUGHPUT_PER_S, SPEED_THROUGHPUT_PER_S_P10, SPEED_THROUGHPUT_PER_S_P90 = "speed/throughput_per_s", "speed/throughput_per_s_p10", "speed/throughput_per_s_p90"
"""A compressed variant's measured speed (``lbsearch.trial.timing``): the latency of one text, in ms, and texts a second in batches."""

PLAN_BATCH_SIZE, PLAN_MICRO_BATCH, PLAN_ACCUMULATION, PLAN_LR = "plan/batch_size", "plan/micro_batch", "plan/accumulation", "plan/lr"
"""A phase's layout when a batch schedule resizes the batch (``lbsearch.trial.resize``)."""

GNS_B_SIMPLE, GNS_B_SIMPLE_TOKENS = "gns/b_simple", "gns/b_simple_tokens"
"""The gradient noise scale (``lbsearch.trial.diagnostics``): the simple noise scale B_simple, in samples, and in tokens for a language model."""
GNS_GRAD_SQ, GNS_TRACE_SIGMA = "gns/grad_sq", "gns/trace_sigma"
"""The estimates B_simple is the ratio of: the squared true gradient norm and the trace of the per-sample covariance."""

CBS_CBS, CBS_CI_LOW, CBS_CI_HIGH = "cbs/cbs", "cbs/ci_low", "cbs/ci_high"
"""A branch study's critical batch at each branch point, with its interval, on the study's parent run
(``lbsearch.orchestrator``; step: tokens of the point)."""

TRIALS_COMPLETE, TRIALS_PRUNED, TRIALS_FAIL = "trials/complete", "trials/pruned", "trials/fail"
"""A study's parent run, after each trial: how many trials are complete, pruned, failed."""
BEST_VALUE, BEST_TEST = "best/value", "best/test"
"""A study's parent run, after each trial: the best trial's validation value and its test metric."""
REPORT_B_CRIT, REPORT_S_MIN, REPORT_LR_ALPHA = "report/b_crit", "report/s_min", "report/lr_alpha"
REPORT_LR_ALPHA_CI_LOW, REPORT_LR_ALPHA_CI_HIGH = "report/lr_alpha_ci_low", "report/lr_alpha_ci_high"
"""A study's parent run, from its batch-scaling report: the fitted B_crit and S_min, and the lr exponent with its interval."""
