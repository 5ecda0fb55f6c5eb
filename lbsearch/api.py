"""The trial API for your own training code: the public path of ``lbsearch.integrations.api``."""

from lbsearch.integrations.api import Trial, current

__all__ = ["Trial", "current"]
