"""Separate hosts on one machine: Linux network namespaces joined by veth links on a bridge.

Each `Hosts.add` makes a namespace with its own loopback and one address on a private 10.x
subnet. The bridge lives in a namespace of its own (the "switch"), so nothing is added to the
machine's own network and nothing can leave it: the hosts reach each other and nothing else.
Processes are started in a host with `ip netns exec`, each in its own process group.

`Hosts` is a context manager: leaving it (normally or on any failure) stops every process it
started, by its process group, then deletes every namespace it made, which removes the links and
the bridge with them. Needs root (CI runs as root).
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path


def can_make_namespaces() -> str | None:
    """None when namespaces can be made here, else why not: only the lack of root is a reason
    to skip (CI runs the suite as root). As root, a missing or broken `ip` is a missing
    dependency and raises, naming the package, instead of skipping the test."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    try:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError("the deployment test needs `ip` (Debian package iproute2)") from None
    if listed.returncode != 0:
        raise RuntimeError(f"`ip netns list` failed as root: {listed.stderr.strip()[:300]}")
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Hosts:
    def __init__(self, subnet: int | None = None) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.subnet = subnet if subnet is not None else 1 + int(self.tag, 16) % 250
        """Addresses are 10.231.<subnet>.<n>/24."""
        self.switch = f"shoal-sw-{self.tag}"
        self.namespaces: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self.procs: list[subprocess.Popen] = []
        self._made: list[str] = []

    def __enter__(self) -> "Hosts":
        try:
            _ip("netns", "add", self.switch)
            self._made.append(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: str) -> str:
        """A new host `name`; returns its address."""
        ns = f"shoal-{name}-{self.tag}"
        n = len(self.namespaces) + 1
        address = f"10.231.{self.subnet}.{n}"
        _ip("netns", "add", ns)
        self._made.append(ns)
        inside, outside = f"h{n}{self.tag}", f"s{n}{self.tag}"  # at most 15 characters
        _ip("link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside,
            "netns", self.switch)
        _ip("-n", self.switch, "link", "set", outside, "master", "br0")
        _ip("-n", self.switch, "link", "set", outside, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.namespaces[name], self.addresses[name] = ns, address
        return address

    def run(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
            log: Path | None = None, **kw: object) -> subprocess.Popen:
        """Start `args` on host `name` (in its own process group), output to `log`."""
        out = open(log, "wb") if log else subprocess.DEVNULL
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespaces[name], *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def check_output(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
                     timeout: float = 60.0) -> str:
        """Run `args` on host `name` to completion; its stdout (raises on a non-zero exit)."""
        done = subprocess.run(["ip", "netns", "exec", self.namespaces[name], *args], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{args[:3]} on {name} exited {done.returncode}:\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        self.procs.clear()
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        self._made.clear()
