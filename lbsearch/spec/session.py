"""Where a run's state lives: the mlruns root, the Optuna storage URL and the MLflow tracking URI.

Both the study package (Optuna) and the tracking package (MLflow) take a ``Session``; it holds
paths and URLs only, so that every floor above the spec can name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lbsearch.spec.config import StudyConfig

__all__ = ["Session", "default_tracking_uri"]


def default_tracking_uri(root: Path) -> str:
    """The SQLite MLflow store under the mlruns root."""
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


@dataclass
class Session:
    """Where state lives: the mlruns root, the Optuna storage URL and the MLflow tracking URI."""

    root: Path
    storage: str | None = None
    tracking_uri: str | None = None
    out: Callable[[str], None] = field(default=lambda s: print(s, flush=True))

    def storage_for(self, study: StudyConfig | None) -> str:
        """``--storage``, then the study spec's ``storage``, then a journal file under root."""
        url = self.storage or (study.storage if study is not None else None)
        return url or f"journal://{(self.root / 'optuna.journal').resolve()}"

    def tracking_uri_for(self, study: StudyConfig | None = None) -> str:
        """``--tracking-uri``, then the study spec's ``tracking_uri``, then the SQLite store under root."""
        return self.tracking_uri or (study.tracking_uri if study else None) or default_tracking_uri(self.root)
