"""Servers bind 127.0.0.1, YAML is loaded safely, remote code is off by default, the environment is never logged."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

from conftest import LBSEARCH, SPECS

from lbsearch.cli.main import build_parser
from lbsearch.orchestrator.launch import free_port
from lbsearch.orchestrator.processes import stop_group
from lbsearch.tracking.tracker import versions


def _listening(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp, IPv4)."""
    out = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":
            out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def test_ui_binds_loopback_only(tmp_path):
    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"
    port = free_port()
    proc = subprocess.Popen([*LBSEARCH, "ui", "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not _listening(port):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        assert _listening(port) == ["127.0.0.1"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
            assert resp.status == 200
    finally:
        stop_group(proc)


def test_environment_is_never_logged(tmp_path):
    secret = "lbsearch-test-secret-5f3a"
    env = dict(os.environ, MY_API_TOKEN=secret)
    proc = subprocess.run([*LBSEARCH, "train", str(SPECS / "tiny.yaml"), "--set=train.budget_samples=64", "--set=train.eval_every_samples=64"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in (tmp_path / "mlruns").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert "MY_API_TOKEN" not in versions()
