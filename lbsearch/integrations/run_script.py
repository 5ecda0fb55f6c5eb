"""The entry of a script trial: ``accelerate launch ... -m lbsearch.integrations.run_script train.py ARGS`` (once per rank).

Runs the user's script as ``__main__`` (``-m package.module`` works too) with a watchdog that ends it
when the orchestrator is gone, and writes the result the script left unwritten: the last ``report`` of
``lbsearch.api`` when it exited 0, or ``failed`` with the exception when it crashed. A script that
never used the API and exited 0 leaves no result: the orchestrator then reads its final metrics
(``lbsearch.orchestrator.script_trial.result_from_output``).
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from pathlib import Path

import lbsearch.integrations.api as api
from lbsearch.link import watch_parent
from lbsearch.spec import SPEC_ENV, WorkerSpec


def _run(argv: list[str]) -> None:
    if argv[0] == "-m":
        sys.argv = argv[1:]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, str(Path(argv[0]).resolve().parent))
        runpy.run_path(argv[0], run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = os.environ.get(SPEC_ENV)
    if path:
        spec = WorkerSpec.model_validate_json(Path(path).read_text())
        if spec.watch_pid:
            watch_parent(spec.watch_pid)
    if os.environ.get("LBSEARCH_CPU") == "1":  # a plain `Accelerator()` then runs the ranks on CPUs (gloo)
        os.environ["ACCELERATE_USE_CPU"] = "true"
    error: BaseException | None = None
    try:
        _run(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException as err:  # noqa: BLE001 - any failure is the trial's result, reported once
        traceback.print_exc()
        error, code = err, 1
    sys.stdout.flush()
    api._close(code, error)
    _end_process_group()
    return code


def _end_process_group() -> None:
    """A process group left open (a script without ``accelerator.end_training()``) aborts the rank at exit."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
