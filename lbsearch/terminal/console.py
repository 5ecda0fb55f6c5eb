"""What a person sees on a terminal: how tables are drawn (the columns of ``status`` are ``lbsearch.study.views``) and the live progress of a study.

On a terminal, ``study_progress`` draws two lines with rich, redrawn in place: the study (trials
counted / n_trials, complete / pruned / failed, best so far, elapsed, time left) and the running
trial (samples seen / budget, loss, metric, samples/s, elapsed, time left). Lines printed meanwhile
scroll above them. Elsewhere (CI, logs, ``| tee``) nothing is drawn and the plain line per event is
all there is. The trial's figures come from the metric rows the trial process sends anyway (see
``protocol``), so the bars ask nothing more of the worker. Torch-free and MLflow-free; rich is
imported only when something is drawn.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any, Callable

from lbsearch.spec import EVAL, PROGRESS_SAMPLES, TRAIN_LOSS, TRAIN_MFU, TRAIN_SAMPLES_PER_S

__all__ = ["fmt", "print_table", "Progress", "study_progress", "active"]


def fmt(v: Any) -> str:
    """A cell: ``-`` for None, 4 significant digits for floats."""
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _number(cell: Any) -> bool:
    if isinstance(cell, str):  # a formatted number, perhaps marked ("0.81*")
        try:
            float(cell.rstrip("*"))
        except ValueError:
            return False
        return True
    return isinstance(cell, (int, float)) and not isinstance(cell, bool)


def _numeric(rows: Sequence[Sequence[Any]], i: int) -> bool:
    cells = [r[i] for r in rows if i < len(r) and r[i] is not None]
    return bool(cells) and all(_number(c) for c in cells)


def print_table(columns: list[str], rows: list[list[Any]], title: str | None = None, *, stream: IO[str] | None = None,
                caption: str | None = None) -> None:
    """Print ``rows`` under ``columns`` as a rich table; numbers are right-aligned, None shows as ``-``.

    Cells may be any value (formatted with ``fmt``) or a ready string (printed as is, no markup).
    On a terminal the table fits the screen, in colour; elsewhere it keeps its natural width and has
    no escape codes, so logs and tests read the same text.

    Example:
        print_table(["trial", "value"], [[0, 0.8125], [1, None]], title="study quickstart")
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    stream = stream or sys.stdout
    tty = _is_terminal(stream)
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left", caption_justify="left",
                  header_style="bold" if tty else "", title_style="bold" if tty else "", show_edge=False, pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="right" if _numeric(rows, i) else "left", overflow="fold")
    for row in rows:
        table.add_row(*(Text(c if isinstance(c, str) else fmt(c)) for c in row))
    if tty:
        Console(file=stream, highlight=False).print(table)
        return
    buf = io.StringIO()  # natural width, no escape codes, no trailing blanks
    Console(file=buf, width=10_000, force_terminal=False, no_color=True, highlight=False).print(table)
    stream.write("".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines()))
    stream.flush()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class Progress:
    """The study loop and the trial runner report to this; the plain one draws nothing (not a
    terminal), so the callers never ask whether anything is shown."""

    def study(self, *, counted: int, complete: int, pruned: int, failed: int, best: str | None) -> None:
        """After each trial: how many count toward ``n_trials``, by state, and the best so far."""

    def trial_start(self, name: str, budget: int, metric: str) -> None:
        """A trial process starts; ``budget`` in samples."""

    def trial_metrics(self, rows: list[list[Any]]) -> None:
        """Metric rows ``[key, value, ts_ms, step]`` as the trial process sent them."""

    def trial_end(self) -> None:
        """The trial process has ended (complete, pruned, failed or interrupted)."""


_ACTIVE: Progress = Progress()


def active() -> Progress:
    """The progress display of this process's running study (a do-nothing one when none is drawn)."""
    return _ACTIVE


@contextlib.contextmanager
def study_progress(name: str, n_trials: int, *, done: int = 0) -> Iterator[Progress]:
    """Draw the study's live progress while the block runs, when stdout is a terminal."""
    global _ACTIVE
    if not _is_terminal(sys.stdout):
        yield _ACTIVE
        return
    live = _LiveProgress(name, n_trials, done)
    _ACTIVE = live
    try:
        with live.bars:
            yield live
    finally:
        _ACTIVE = Progress()


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-:--:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _LiveProgress(Progress):
    """Two rich progress bars; the text after each is computed at every refresh, so times tick."""

    def __init__(self, name: str, n_trials: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bars

        self.bars = Bars(TextColumn("[bold]{task.description}"), BarColumn(bar_width=28), MofNCompleteColumn(),
                         TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), _info_column(), refresh_per_second=2)
        self.n_trials, self.metric = n_trials, "metric"
        self.durations: list[float] = []  # of the trials run by this process
        self.trial_t0: float | None = None
        self.figures: dict[str, float] = {}
        self.budget = 0
        self.counts = "complete 0 · pruned 0 · failed 0 · best -"
        self.counted = done
        self.study_task = self.bars.add_task(f"study {name}", total=n_trials, completed=done, unit="trials", info=self._study_info)
        self.trial_task: Any = None

    def _study_info(self) -> str:
        left = self.n_trials - self.counted
        if not self.durations or left <= 0:
            return self.counts
        mean = sum(self.durations) / len(self.durations)
        running = time.monotonic() - self.trial_t0 if self.trial_t0 is not None else 0.0
        return f"{self.counts} · ~{_clock(left * mean - min(running, mean))} left"

    def study(self, *, counted: int, complete: int, pruned: int, failed: int, best: str | None) -> None:
        self.counted = counted
        self.counts = f"complete {complete} · pruned {pruned} · failed {failed} · best {best or '-'}"
        self.bars.update(self.study_task, completed=counted)

    def trial_start(self, name: str, budget: int, metric: str) -> None:
        self.trial_end()
        self.trial_t0, self.metric, self.budget, self.figures = time.monotonic(), metric, budget, {}
        self.trial_task = self.bars.add_task(name.strip("[]"), total=budget, unit="samples", info=self._trial_info)

    def _trial_info(self) -> str:
        f = self.figures
        parts = [f"loss {f[TRAIN_LOSS]:.4f}" if TRAIN_LOSS in f else "starting",
                 f"{self.metric} {f[EVAL + self.metric]:.4f}" if EVAL + self.metric in f else "",
                 f"{f[TRAIN_SAMPLES_PER_S]:.0f} samples/s" if f.get(TRAIN_SAMPLES_PER_S) else "",
                 f"MFU {f[TRAIN_MFU]:.1%}" if f.get(TRAIN_MFU) else ""]
        if f.get(TRAIN_SAMPLES_PER_S):  # at the last evaluation's speed, counted down since; none once overdue
            left = (self.budget - f.get(PROGRESS_SAMPLES, 0)) / f[TRAIN_SAMPLES_PER_S] - (time.monotonic() - f["at"])
            parts.append(f"~{_clock(left)} left" if left >= 1 else "")
        return " · ".join(p for p in parts if p)

    def trial_metrics(self, rows: list[list[Any]]) -> None:
        if self.trial_task is None:
            return
        for key, value, _ts, _step in sorted(rows, key=lambda r: r[3]):
            self.figures[key] = value
        self.figures["at"] = time.monotonic()
        if PROGRESS_SAMPLES in self.figures:
            self.bars.update(self.trial_task, completed=self.figures[PROGRESS_SAMPLES])

    def trial_end(self) -> None:
        if self.trial_task is not None:
            if self.trial_t0 is not None:
                self.durations.append(time.monotonic() - self.trial_t0)
            self.bars.remove_task(self.trial_task)
        self.trial_task, self.trial_t0 = None, None


def _info_column():
    """A column showing ``task.fields["info"]()``: recomputed at each refresh."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Info(ProgressColumn):
        def render(self, task) -> Text:
            info: Callable[[], str] = task.fields.get("info", lambda: "")
            return Text(info(), style="dim")

    return Info()
