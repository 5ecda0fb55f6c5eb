"""Rank 0's metric rows: their step is the data seen (samples, tokens for a language model), so
MLflow's charts line trials of different batch sizes up at equal data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from select import PIPE_BUF

import pytest

from lbsearch.link import Reporter
from lbsearch.spec import EVAL, PROGRESS_STEP, TRAIN_LOSS, message, metric_messages, split_message
from lbsearch.spec.protocol import MARK, WorkerSpec, parse_message


@pytest.mark.parametrize(("experiment", "step"), [({"task": "single_label", "data": {"max_length": 48}, "train": {}}, 64),
                                                  ({"task": "causal_lm", "data": {"max_length": 128}, "train": {}}, 64 * 128)])
def test_metric_rows_are_at_samples_seen_and_tokens_for_a_language_model(capsys, experiment, step):
    spec = WorkerSpec(experiment=experiment, data_path="x", num_labels=2, pad_id=0, vocab_size=10, tracking=True)
    rep = Reporter(spec, is_main=True)
    rep.metrics({EVAL + "loss": 0.5, PROGRESS_STEP: 2}, samples=64)  # B = 32, after optimizer step 2
    rep.flush()
    (line,) = capsys.readouterr().out.splitlines()
    kind, rows = parse_message(line)
    assert kind == "metrics" and [(k, v, s) for k, v, _, s in rows] == [(EVAL + "loss", 0.5, step), (PROGRESS_STEP, 2.0, step)]


def test_sync_sends_the_buffered_rows_before_it_asks_for_them_in_mlflow(capsys):
    """A checkpoint's ``sync`` is one call: the rows still in the buffer go out first, so none is left behind the sync."""
    spec = WorkerSpec(experiment={"task": "single_label", "data": {"max_length": 48}, "train": {}}, data_path="x", num_labels=2, pad_id=0,
                      vocab_size=10, tracking=True)
    rep = Reporter(spec, is_main=True)
    rep.metrics({TRAIN_LOSS: 0.7}, samples=32)
    rep.sync()
    rep.sync()  # nothing buffered: the sync alone
    kinds = [parse_message(line)[0] for line in capsys.readouterr().out.splitlines()]
    assert kinds == ["metrics", "sync", "sync"]


NOISY_RANKS = r'''
import subprocess, sys, time
from lbsearch.link import Reporter
from lbsearch.spec import TRAIN_LOSS, WorkerSpec

other = subprocess.Popen([sys.executable, "-c", "import sys\nfor i in range({lines}):\n print(f'rank 1 says {{i}}')\n if i == 100: "
                          "sys.stderr.write('printing\\n'); sys.stderr.flush()"], stderr=subprocess.PIPE)
rep = Reporter(WorkerSpec(experiment={{"train": {{}}}}, data_path="x", num_labels=2, pad_id=0, vocab_size=10, tracking=True), is_main=True)
other.stderr.readline()  # rank 1 is printing: both write at once from here
for i in range({rows}):
    rep.metrics({{TRAIN_LOSS: i}}, samples=i)
    if (i + 1) % (25 if i < {rows} // 2 else 250) == 0:  # lines of about 1 KiB, then of about 10 KiB (sent as several)
        rep.flush()
        time.sleep(0.002)
rep.sync()
other.wait()
'''


def test_no_row_is_lost_while_another_rank_prints_into_the_same_pipe():
    """Ranks share the orchestrator's pipe and trials run under PYTHONUNBUFFERED, where ``print`` writes the text and its
    newline apart: rank 0's marked lines must come through whole, each row once, and the other rank's lines too."""
    lines, rows = 100_000, 10_000
    out = subprocess.run([sys.executable, "-c", NOISY_RANKS.format(lines=lines, rows=rows)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    got, said, after = [], set(), []
    for line in out.stdout.splitlines():
        text, msg = split_message(line)  # another rank's text may come before the mark (it writes its newline apart)
        said.update(int(i) for i in re.findall(r"rank 1 says (\d+)", text))
        if msg is not None:
            after += [line] if text != line[: line.index(MARK)] else []  # never after it: one write, newline included
            got += [v for _, v, _, _ in msg[1]] if msg[0] == "metrics" else []
    assert after == []
    assert got == [float(i) for i in range(rows)]
    assert said == set(range(lines))


def test_a_message_after_another_ranks_unfinished_line_is_read_and_the_text_kept():
    rows = [[TRAIN_LOSS, 0.5, 1, 3]]
    assert split_message("rank 1 says hi" + message("metrics", rows)) == ("rank 1 says hi", ("metrics", rows))
    assert split_message(message("sync", None) + "rank 1 says hi") == ("rank 1 says hi", ("sync", None))
    assert split_message("samples 320/960 loss 0.69") == ("samples 320/960 loss 0.69", None)
    with pytest.raises(ValueError):
        split_message(message("metrics", rows)[:30])


def test_a_long_buffer_goes_out_in_lines_of_at_most_pipe_buf_bytes_each_row_once():
    buffered = [[TRAIN_LOSS, float(i), 1_700_000_000_000 + i, i * 32] for i in range(1000)]
    lines = metric_messages(buffered)
    assert len(lines) > 1 and all(len((line + "\n").encode()) <= PIPE_BUF for line in lines)
    assert [row for line in lines for row in parse_message(line)[1]] == buffered
