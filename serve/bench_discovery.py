"""`shoal bench discovery`: how fast the DHT finds nodes, forgets dead ones, and answers lookups.

For each swarm size N, N announcer processes (`python -m serve.bench_discovery announce …`: a DHT
peer announcing a freshly signed node record, as a node's announcer does, without a model) join
one private swarm whose bootstrap peer is the benchmark's own reader (a member, running the
gateway's `DhtDiscovery`). Measured, per size:

- **start to visible**: from spawning a process to the reader's view listing its record, and from
  the process's first accepted announcement to that (both clocks are this host's);
- **lookups/s**: full lookups of the swarm's records (the index, then every member's record from
  every storing peer, all verified) back to back for `lookup_s` seconds — what one gateway's
  refresh costs, and so how often it could refresh;
- **death to removal**: from SIGKILL of a process to its record leaving the reader's view (the
  bound is `ttl_s` plus one lookup, which may wait out the dead peer's `rpc_timeout_s`; a
  gateway, refreshing every `refresh_s`, adds up to that).

A gateway routes through a new node only after its verifier admitted it; that check is measured by
`shoal bench swarm --proofs`, not here. Means come with a 95 % t-interval (samples are small).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve.config import DhtConfig


@dataclass
class DiscoveryBenchConfig:
    sizes: list[int] = field(default_factory=lambda: [3, 10])
    """Announcer processes per run."""
    lookup_s: float = 5.0
    """Seconds of back-to-back lookups per size."""
    kills: int = 3
    """Processes killed one after another per size (each removal timed)."""
    ttl_s: float = DhtConfig.model_fields["ttl_s"].default
    announce_s: float = DhtConfig.model_fields["announce_s"].default
    out_dir: Path = Path("bench-out")


def mean_ci(values: list[float]) -> dict:
    """Mean, 95 % t-interval, min and max of `values` (seconds)."""
    import statistics

    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    half = (stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / n ** 0.5) if n > 1 else 0.0
    return {"n": n, "mean_s": round(mean, 3), "ci95_s": [round(mean - half, 3),
                                                         round(mean + half, 3)],
            "min_s": round(min(values), 3), "max_s": round(max(values), 3)}


def _announcer(config: DhtConfig, log_dir: Path, i: int) -> subprocess.Popen:
    log = open(log_dir / f"announcer{i}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "serve.bench_discovery", "announce",
                             config.model_dump_json()], stdout=subprocess.PIPE, stderr=log,
                            start_new_session=True, text=True)


async def _first_line(proc: subprocess.Popen) -> dict:
    line = await asyncio.to_thread(proc.stdout.readline)
    if not line:
        raise RuntimeError(f"announcer {proc.pid} exited with {proc.wait()}")
    return json.loads(line)


async def _measure(cfg: DiscoveryBenchConfig, n: int, log_dir: Path) -> dict:
    from serve.dht import DhtPeer
    from serve.dht_discovery import DhtDiscovery
    from serve.invite import Peer, new_invite
    from serve.up import free_port

    port = free_port()
    invite = new_invite("bench", [Peer(host="127.0.0.1", port=port)])
    reader = DhtDiscovery(DhtPeer(DhtConfig(invite=invite, port=port, host="127.0.0.1",
                                            ttl_s=cfg.ttl_s, announce_s=cfg.announce_s)))
    await reader.peer.start()
    member = DhtConfig(invite=invite, ttl_s=cfg.ttl_s, announce_s=cfg.announce_s,
                       host="127.0.0.1")
    procs, spawned = [], []
    try:
        for i in range(n):
            spawned.append(time.monotonic())
            procs.append(_announcer(member, log_dir, i))
        seen: dict[str, tuple[float, float]] = {}
        """node id -> (monotonic, wall) time the reader first listed it."""

        async def watch() -> None:  # from the first spawn on, beside the announcers' start
            deadline = time.monotonic() + 120
            while len(seen) < n and time.monotonic() < deadline:
                await reader.refresh()
                for node in reader.listed():
                    seen.setdefault(node.node_id, (time.monotonic(), time.time()))
                await asyncio.sleep(0.02)  # a lookup with no peer yet never yields

        watching = asyncio.create_task(watch())
        firsts = await asyncio.gather(*(_first_line(p) for p in procs))
        await watching
        missing = [f["node_id"] for f in firsts if f["node_id"] not in seen]
        if missing:
            raise RuntimeError(f"{len(missing)} of {n} announcers never became visible")
        start_to_visible = [seen[f["node_id"]][0] - spawned[i] for i, f in enumerate(firsts)]
        announce_to_visible = [max(0.0, seen[f["node_id"]][1] - f["announced_at"])
                               for f in firsts]
        lookups, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < cfg.lookup_s:
            await reader.refresh()
            lookups += 1
        lookup_rate = lookups / (time.monotonic() - t0)
        removal = []
        for i in range(min(cfg.kills, n)):
            os.killpg(procs[i].pid, signal.SIGKILL)
            died = time.monotonic()
            while firsts[i]["node_id"] in {x.node_id for x in reader.listed()}:
                if time.monotonic() > died + 10 * cfg.ttl_s:
                    raise RuntimeError(f"a killed announcer is still listed after "
                                       f"{10 * cfg.ttl_s:.0f} s")
                await reader.refresh()
                await asyncio.sleep(0.05)
            removal.append(time.monotonic() - died)
        return {"nodes": n, "start_to_visible": mean_ci(start_to_visible),
                "announce_to_visible": mean_ci(announce_to_visible),
                "lookups_per_s": round(lookup_rate, 1), "lookups": lookups,
                "death_to_removal": mean_ci(removal),
                "removal_bound_s": cfg.ttl_s + member.rpc_timeout_s}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        reader.peer.stop()


def run_discovery_bench(cfg: DiscoveryBenchConfig) -> dict:
    """Every size in turn; writes `discovery.json` and `discovery.png` to `cfg.out_dir`."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = cfg.out_dir / "discovery-logs"
    log_dir.mkdir(exist_ok=True)
    runs = [asyncio.run(_measure(cfg, n, log_dir)) for n in cfg.sizes]
    report = {"config": {"sizes": cfg.sizes, "lookup_s": cfg.lookup_s, "kills": cfg.kills,
                         "ttl_s": cfg.ttl_s, "announce_s": cfg.announce_s,
                         "load_average": os.getloadavg()[0]},
              "runs": runs,
              "summary": {str(r["nodes"]): {
                  "start_to_visible_s": r["start_to_visible"]["mean_s"],
                  "death_to_removal_s": r["death_to_removal"]["mean_s"],
                  "lookups_per_s": r["lookups_per_s"]} for r in runs}}
    (cfg.out_dir / "discovery.json").write_text(json.dumps(report, indent=1))
    _plot(runs, cfg.out_dir / "discovery.png")
    return report


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (times, rate) = plt.subplots(1, 2, figsize=(9, 3.5))
    sizes = [str(r["nodes"]) for r in runs]
    for offset, key, label in ((-0.2, "start_to_visible", "start → visible"),
                               (0.2, "death_to_removal", "death → removal")):
        means = [r[key]["mean_s"] for r in runs]
        errs = [[m - r[key]["ci95_s"][0] for m, r in zip(means, runs)],
                [r[key]["ci95_s"][1] - m for m, r in zip(means, runs)]]
        times.bar([i + offset for i in range(len(runs))], means, 0.4, yerr=errs, label=label)
    times.set_xticks(range(len(runs)), sizes)
    times.set_xlabel("announcer processes")
    times.set_ylabel("seconds (mean, 95 % CI)")
    times.legend()
    rate.bar(sizes, [r["lookups_per_s"] for r in runs])
    rate.set_xlabel("announcer processes")
    rate.set_ylabel("full lookups / s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def _announce(config: DhtConfig) -> None:
    """One announcer: a random node key, its record announced every `announce_s`; the first
    accepted announcement is reported on stdout."""
    from registry.signing import SigningKey
    from serve.dht_discovery import announce_forever, peer_for
    from serve.records import node_id_of, sign_record

    key = SigningKey.generate("bench")
    node_id = node_id_of(key.public_hex)

    def info() -> dict:
        return {"node_id": node_id, "url": "ws://127.0.0.1:9", "start": 0, "end": 1,
                "version": "bench", "versions": ["bench"], "channel": {},
                "public_key": key.public_hex, "pid": os.getpid(), "sessions": 0, "queue": 0,
                "ms_per_token_layer": 1.0, "stats": {}, "attestation": None}

    async def orphaned() -> None:  # the benchmark died without stopping us: stop too
        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(0.5)

    async def announce() -> None:
        peer = await peer_for(config).start()
        while await peer.announce(sign_record(key, info())) <= 1:
            await asyncio.sleep(0.05)
        print(json.dumps({"node_id": node_id, "announced_at": time.time()}), flush=True)
        await announce_forever(peer, key, info)

    tasks = [asyncio.create_task(orphaned()), asyncio.create_task(announce())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)


if __name__ == "__main__":
    if sys.argv[1:2] != ["announce"] or len(sys.argv) != 3:
        sys.exit("usage: python -m serve.bench_discovery announce DHT_CONFIG_JSON")
    asyncio.run(_announce(DhtConfig.model_validate_json(sys.argv[2])))
