"""The trial process (torch; never MLflow): the worker (build, step, evaluate, finish), models,
losses and optimizers, batching and packing, language models, checkpoints, the noise-scale
monitor, FLOPs and MFU, metrics, rank collectives and the standby server."""

from lbsearch.trial.model import classify, load_model

__all__ = ['classify', 'load_model']
