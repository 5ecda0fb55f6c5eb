"""The Lightning adapter: the public path of ``lbsearch.integrations.lightning``."""

from lbsearch.integrations.lightning import LbsearchCallback, trainer_arguments

__all__ = ["LbsearchCallback", "trainer_arguments"]
