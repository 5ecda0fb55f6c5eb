"""The trial process (torch; never MLflow): the worker (build, step, evaluate, finish), models,
losses and optimizers, batching and packing, language models, checkpoints, the noise-scale
monitor, FLOPs and MFU, metrics, rank collectives and the standby server."""

from lbsearch.trial.compress import evaluate, finetune, machine_name, nonzero_params, prune_global, pruned_share, timing
from lbsearch.trial.model import classify, load_model, quantize_int8, save_variant, weight_bytes

__all__ = ['evaluate', 'finetune', 'machine_name', 'nonzero_params', 'prune_global', 'pruned_share', 'timing', 'classify', 'load_model',
           'quantize_int8', 'save_variant', 'weight_bytes']
