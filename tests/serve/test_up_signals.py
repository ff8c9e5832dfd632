"""`shoal up` as a real process: SIGTERM and SIGINT stop every child it started (a restarted one
included), and a crashed node is reported with its log tail and started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serve.up import free_port
from tests.serve.conftest import tiny_home

pytestmark = pytest.mark.slow


def start_up(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "SHOAL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "up", "--nodes", "1", "--model", "tiny@production",
         "--port", str(port), "--api-key", "sk-test"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def children(home: Path, timeout_s: float = 60, *, ready: bool = False) -> dict[str, int]:
    """The pids `shoal up` wrote, once it has spawned everything (and, with `ready`, once it
    has itself seen the swarm ready: a node killed before then is a failed start, not a
    crash to restart)."""
    state = home / "run" / "swarm.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            saved = json.loads(state.read_text())
        except (OSError, ValueError):
            saved = {}
        pids = saved.get("pids", {})
        if {"tracker", "gateway", "node0"} <= set(pids) and (saved.get("ready") or not ready):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"shoal up wrote no {'ready ' if ready else ''}state in {timeout_s} s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def stop(up: subprocess.Popen, sig: int, pids: dict[str, int]) -> str:
    up.send_signal(sig)
    out, _ = up.communicate(timeout=60)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.1)
    assert not [n for n, p in pids.items() if alive(p)], out
    return out


def test_sigint_while_starting_leaves_no_child(tmp_path_factory, tiny_model_dir):
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    up = start_up(home, free_port())
    pids = children(home)  # spawned; the nodes are still loading
    out = stop(up, signal.SIGINT, pids)
    assert up.returncode == 0 and "SIGINT: stopping the swarm" in out, out


def test_crashed_node_is_restarted_and_sigterm_stops_all(tmp_path_factory, tiny_model_dir):
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    port = free_port()
    up = start_up(home, port)
    pids = children(home, 120, ready=True)
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    os.killpg(pids["node0"], signal.SIGKILL)
    restarted = pids["node0"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and restarted == pids["node0"]:
        restarted = children(home)["node0"]
        time.sleep(0.3)
    assert restarted != pids["node0"], "node0 was not restarted"
    children(home, 120, ready=True)
    assert alive(restarted)
    out = stop(up, signal.SIGTERM, {**pids, "node0-again": restarted})
    assert up.returncode == 0, out
    assert "node0 exited with status -9" in out and "restarting node0" in out, out
    assert "SIGTERM: stopping the swarm" in out, out
