"""What a person sees on a terminal, torch-free and MLflow-free (rich only): tables (``status``,
``best``) and the live progress of a study and its trial; plain lines where stdout is not a terminal."""

from lbsearch.terminal.console import Progress, active, fmt, print_table, study_progress

__all__ = ["Progress", "active", "fmt", "print_table", "study_progress"]
