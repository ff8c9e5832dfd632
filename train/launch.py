"""Starting training with DeepSpeed's own launcher, on one host or many.

- one host: `--num_gpus N` processes (`DS_ACCELERATOR=cpu` and gloo when there is no GPU);
- many hosts with ssh: a hostfile (`host slots=N` lines), launched once on the first host;
- many hosts without ssh: the same hostfile, launched on every host with its `--node_rank`
  and a shared `--master_addr` / `--master_port` (what the tests do on loopback).

`launch` runs the launcher as a subprocess, streams its output line by line to `on_line` and
returns the run's `summary.json` as a `train.records` model; a failure raises `LaunchError`
carrying the log's tail.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serve.up import free_port
from train.config import TrainConfig
from train.exceptions import LaunchError
from train.records import StoppedSummary, TrainSummary, load_summary

log = logging.getLogger("shoal.train")

STALE_BUILD_LOCK_S = 15 * 60.0
"""A torch extension build lock older than this is a killed build's (a real build of DeepSpeed's
CPU communicator takes a minute or two here)."""


@dataclass
class Topology:
    procs: int = 2
    """Processes per host (GPUs per host in the field)."""
    hostfile: Path | None = None
    node_rank: int | None = None
    """Set to launch this host's share without ssh (needs `hostfile` and `master_addr`)."""
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    cpu: bool | None = None
    """Force the CPU accelerator (default: when no CUDA device is visible)."""

    @property
    def worker(self) -> bool:
        """This host runs a share of a multi-host run but not rank 0: it writes no summary or
        weights (rank 0's host collects them)."""
        return self.node_rank is not None and self.node_rank > 0


def write_hostfile(path: Path, nnodes: int, procs: int) -> Path:
    """A hostfile of `nnodes` hosts with `procs` slots each, for launches without ssh: each host
    is then started with its own `--node_rank`, and DeepSpeed reads only the world's shape from
    the file, so the names are placeholders (``host-0`` …)."""
    if nnodes < 1 or procs < 1:
        raise ValueError(f"nnodes {nnodes} and procs {procs} must be at least 1")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"host-{i} slots={procs}\n" for i in range(nnodes)))
    return path


def hostfile_hosts(path: Path) -> int:
    """The number of hosts a hostfile lists (comment and blank lines skipped)."""
    lines = [ln.split("#", 1)[0].strip() for ln in Path(path).read_text().splitlines()]
    return sum(1 for ln in lines if ln)


def command(config_path: Path, topo: Topology) -> list[str]:
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner",
           "--master_addr", topo.master_addr, "--master_port", str(topo.master_port or free_port())]
    if topo.hostfile:
        cmd += ["--hostfile", str(topo.hostfile)]
        if topo.node_rank is not None:
            cmd += ["--no_ssh", "--node_rank", str(topo.node_rank)]
    else:
        cmd += ["--num_gpus", str(topo.procs)]
    return cmd + ["--no_local_rank", "--module", "train.run", str(config_path)]


def environment(topo: Topology) -> dict[str, str]:
    env = dict(os.environ)
    cpu = topo.cpu
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    if cpu:
        env["DS_ACCELERATOR"] = "cpu"
    # the module must be importable by every process, wherever the launcher is started
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def extensions_root() -> Path:
    """Where torch builds C++ extensions (DeepSpeed's CPU all-reduce is one), as torch decides."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory("", verbose=False))  # the root itself (made if missing)


def remove_stale_build_locks(root: Path | None = None, *, older_than_s: float = STALE_BUILD_LOCK_S
                             ) -> list[Path]:
    """Remove extension build locks left by a build that was killed.

    torch's extension builder takes a lock file in the extension's build directory and every later
    build (each rank of each run) waits for it to go away, forever: one training run killed while it
    built DeepSpeed's communicator would hang every run after it. The lock holds no owner to ask, so
    its age decides."""
    root = root or extensions_root()
    removed = []
    for lock in root.glob("*/lock"):
        try:
            if time.time() - lock.stat().st_mtime > older_than_s:
                lock.unlink()
                removed.append(lock)
                log.warning("removed a stale extension build lock %s", lock)
        except FileNotFoundError:
            pass  # the build finished meanwhile
    return removed


def start(config: TrainConfig, topo: Topology) -> subprocess.Popen:
    """Write the config into the run directory and start the launcher (does not wait)."""
    remove_stale_build_locks()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    path.write_text(config.model_dump_json(indent=2))
    return subprocess.Popen(command(path, topo), env=environment(topo), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)  # so a caller can stop the whole group


def wait(proc: subprocess.Popen, config: TrainConfig,
         on_line: Callable[[str], None] | None = None, *, worker: bool = False
         ) -> TrainSummary | StoppedSummary | None:
    """Stream the launcher's output into `launcher.log` (and `on_line`) until it exits; return the
    run's summary (None on a `worker` host, which writes none)."""
    tail: deque[str] = deque(maxlen=40)
    with open(Path(config.output) / "launcher.log", "a") as log:
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip())
            if on_line:
                on_line(line.rstrip())
    code = proc.wait()
    release_shared_memory(proc.args)
    if code != 0 or not (worker or TrainSummary.path(config.output).is_file()):
        raise LaunchError(f"training exited with code {code}:\n" + "\n".join(tail))
    return None if worker else load_summary(config.output)


def release_shared_memory(cmd: list[str]) -> list[Path]:
    """Remove the /dev/shm segments DeepSpeed's CPU all-reduce made for the run `cmd` launched.

    DeepSpeed's shm communicator creates one ~70 MB segment per local rank, named after the master
    address and port, and never unlinks it: every CPU run would leave them behind in /dev/shm, which
    is memory. Called once the launcher has exited (every rank mapped its peers' at start-up)."""
    addr, port = (cmd[cmd.index(flag) + 1] for flag in ("--master_addr", "--master_port"))
    pattern = f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_*"
    removed = sorted(Path("/dev/shm").glob(pattern))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def launch(config: TrainConfig, topo: Topology | None = None,
           on_line: Callable[[str], None] | None = None
           ) -> TrainSummary | StoppedSummary | None:
    """Train with DeepSpeed's launcher and return the run summary (None on a worker host)."""
    topo = topo or Topology()
    return wait(start(config, topo), config, on_line, worker=topo.worker)
