"""Separate hosts on one machine: Linux network namespaces joined by veth links on a bridge.

Each `Hosts.add` makes a namespace with its own loopback and one address on a private 10.x
subnet. The bridge lives in a namespace of its own (the "switch"), so nothing is added to the
machine's own network and nothing can leave it: the hosts reach each other and nothing else.
Processes are started in a host with `ip netns exec`, each in its own process group.

`Hosts` is a context manager: leaving it (normally or on any failure) stops every process it
started, by its process group, then deletes every namespace it made, which removes the links and
the bridge with them. Needs root (CI runs as root).

`Hosts.refuse_inbound` puts a host behind a firewall of its own (nftables in its namespace: only
loopback and connections the host opened itself are let in), as a home NAT or a cloud security
group without inbound rules is; `Hosts.kill` ends a host at once: every process in its namespace
killed, its link removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path


def can_make_namespaces(firewall: bool = False) -> str | None:
    """None when namespaces (and, with `firewall`, their nftables rules) can be made here, else
    why not: only the lack of root is a reason to skip (CI runs the suite as root). As root, a
    missing or broken `ip` (or `nft`) is a missing dependency and raises, naming the package,
    instead of skipping the test."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    try:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError("the deployment test needs `ip` (Debian package iproute2)") from None
    if listed.returncode != 0:
        raise RuntimeError(f"`ip netns list` failed as root: {listed.stderr.strip()[:300]}")
    if firewall and shutil.which("nft") is None:
        raise RuntimeError("the deployment test needs `nft` (Debian package nftables; "
                           "`make install` installs it)")
    return None


REFUSE_INBOUND = """
table inet shoal {
    chain input {
        type filter hook input priority 0; policy drop;
        iifname "lo" accept
        ct state established,related accept
    }
}
"""
"""What a host behind NAT gets: nothing comes in but loopback and answers to its own dials."""


def _alive(pid: int) -> bool:
    """Whether any thread of process `pid` still runs. A process's sockets close when its last
    thread exits, and its main thread can be a zombie well before (a node runs torch and
    executor threads), so every thread is looked at."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False
    for task in tasks:
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return True
        except (FileNotFoundError, IndexError):
            pass
    return False


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
        self.links: dict[str, str] = {}
        """Host -> the name of its network interface (e.g. for GLOO_SOCKET_IFNAME)."""

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
        self.links[name] = inside
        return address

    def refuse_inbound(self, name: str) -> None:
        """Drop every connection another host opens to `name` (its own dials still work)."""
        subprocess.run(["ip", "netns", "exec", self.namespaces[name], "nft", "-f", "-"],
                       input=REFUSE_INBOUND.encode(), check=True, capture_output=True)

    def kill(self, name: str) -> list[int]:
        """Host `name` dies: SIGKILL to every process in its namespace, then, once they are
        gone (the kernel has closed their connections), its link is removed. Returns the pids
        killed."""
        listed = subprocess.run(["ip", "netns", "pids", self.namespaces[name]],
                                capture_output=True, text=True, check=True)
        pids = [int(p) for p in listed.stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the connections' FINs (or resets) are on the wire
        _ip("-n", self.namespaces[name], "link", "del", self.links[name])
        return pids

    def run(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
            log: Path | None = None, **kw: object) -> subprocess.Popen:
        """Start `args` on host `name` (in its own process group), output to `log` (only its
        stderr where `stdout` is given)."""
        out = open(log, "wb") if log else subprocess.DEVNULL
        stdout = kw.pop("stdout", out)
        stderr = kw.pop("stderr", subprocess.STDOUT if stdout is out else out)
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespaces[name], *args],
                                env=env, stdout=stdout, stderr=stderr,
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
