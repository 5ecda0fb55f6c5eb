"""The trial API for your own training code: the public path of ``lbsearch.integrations.api``."""

from lbsearch.integrations.api import TRAIN_GRAD_NORM, TRAIN_LOSS, TRAIN_LR, Trial, current

__all__ = ["Trial", "current", "TRAIN_LOSS", "TRAIN_LR", "TRAIN_GRAD_NORM"]
"""The metric names your script logs with ``Trial.log`` for the live trial bar and the divergence check (``TRAIN_LOSS``),
and for the learning-rate and gradient-norm curves lbsearch's own loop logs under the same names."""
