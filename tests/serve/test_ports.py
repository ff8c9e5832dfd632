"""Ports handed to swarm processes lie outside the kernel's ephemeral range (so a client connection
made before the server binds cannot take them) and are never handed out twice."""

from __future__ import annotations

from pathlib import Path

from serve.up import free_port


def test_free_ports_are_distinct_and_below_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports)

