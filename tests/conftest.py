"""Shared fixtures: real CLI runs on a tiny random-init BERT with the real tokenizer and reviews."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SPECS = Path(__file__).parent / "specs"
LBSEARCH = [sys.executable, "-m", "lbsearch.cli"]


def run_cli(*args: str, cwd: Path, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``lbsearch`` CLI in a subprocess; state goes under ``cwd/mlruns``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([*LBSEARCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"lbsearch {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    """A private copy of the test specs (tests may edit them)."""
    dst = tmp_path / "specs"
    shutil.copytree(SPECS, dst)
    return dst


def tree(root: Path) -> dict[str, int]:
    """Every file under root with its size: to check that nothing was written."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}
