"""The HF ``Trainer`` adapter: the public path of ``lbsearch.integrations.hf``."""

from lbsearch.integrations.hf import LbsearchCallback, training_arguments

__all__ = ["LbsearchCallback", "training_arguments"]
