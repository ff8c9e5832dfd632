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
  gateway, refreshing every `refresh_s`, adds up to that);
- **start to first routed request**: a real gateway (`shoal gateway --join`, started while the
  removals are timed) joins the same swarm with no node serving its model, so it answers 503;
  then a real node (`shoal node --join`, all layers) is spawned, and the time to the first 200
  completion is taken, the gateway polling with one-token requests; the benchmark checks that
  the answer's route is that node. It is the node's start (imports, checkout verified, weights
  loaded), its first announcement, the gateway's next lookup, and the gateway's verifier
  admitting it (a live-weight proof) before routing; the node's record reaching the reader is
  timed too. Each sample is a new node (a new key), started once the last one has left the
  gateway's routes. The node and gateway use the DHT's default timings, so the swarm does too
  when this part runs.

Means come with a 95 % t-interval (samples are small).
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
from typing import TYPE_CHECKING

from serve.config import DhtConfig

if TYPE_CHECKING:
    from flows.config import ShoalConfig
    from serve.invite import Invite

API_KEY = "sk-bench"
"""The benchmark gateway's API key (it listens on loopback only)."""


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
    routed: int = 2
    """Real nodes started one after another per size, each timed from its spawn to the first
    completion the gateway routes through it (0: skip that part)."""
    model: str = "production"
    """Registry reference the gateway and the routed nodes serve (in the registry of the
    `ShoalConfig` given to `run_discovery_bench`)."""
    routed_timeout_s: float = 180.0
    """Longest wait for one node's first routed request (or its departure from the routes)."""
    out_dir: Path = Path("bench-out")

    def __post_init__(self) -> None:
        defaults = (DhtConfig.model_fields["ttl_s"].default,
                    DhtConfig.model_fields["announce_s"].default)
        if self.routed and (self.ttl_s, self.announce_s) != defaults:
            raise ValueError(f"routed={self.routed} starts real nodes and a gateway, which use "
                             f"the DHT's default ttl_s and announce_s {defaults}; got "
                             f"{(self.ttl_s, self.announce_s)} (set routed=0 to change them)")


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


class _Routed:
    """A real gateway on the benchmark's swarm, and the real nodes timed from their spawn to the
    first completion it routes through them."""

    def __init__(self, cfg: DiscoveryBenchConfig, shoal_cfg: ShoalConfig, invite: Invite,
                 log_dir: Path, n: int) -> None:
        from serve.up import free_port

        client = shoal_cfg.client()
        self.version = client.resolve(cfg.model)
        self.layers = client.manifest(self.version).num_layers
        self.cfg, self.home, self.log_dir, self.n = cfg, shoal_cfg.home, log_dir, n
        self.invite_file = log_dir / f"invite-{n}.txt"  # the secret stays out of argv
        self.invite_file.write_text(invite.encode() + "\n")
        self.port, self.return_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        env = {**os.environ, "SHOAL_HOME": str(self.home), "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": "1"}
        log = open(self.log_dir / f"{name}-{self.n}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _alive(self, proc: subprocess.Popen, name: str) -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"the benchmark's {name} exited with {proc.returncode}; see "
                               f"{self.log_dir / f'{name}-{self.n}.log'}")

    def spawn_gateway(self) -> None:
        self._spawn("gateway", [
            "gateway", "--model", self.version, "--join", f"@{self.invite_file}", "--port",
            str(self.port), "--return-port", str(self.return_port), "--return-url",
            f"ws://127.0.0.1:{self.return_port}", "--api-key", API_KEY, "--drafter", "off"])

    async def wait_gateway(self) -> None:
        """Wait until the gateway answers (503 at first: no node serves its model)."""
        import httpx

        gateway = self.procs[0]
        deadline = time.monotonic() + self.cfg.routed_timeout_s
        async with httpx.AsyncClient(timeout=5) as http:
            while time.monotonic() < deadline:
                self._alive(gateway, "gateway")
                try:
                    await http.get(f"{self.url}/health")
                    return
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
        raise RuntimeError(f"the benchmark's gateway did not answer in "
                           f"{self.cfg.routed_timeout_s:.0f} s")

    async def sample(self, reader, i: int, last: bool) -> dict:
        """Spawn a node serving every layer, time its record's first sight and the first 200
        through it, kill it and (unless `last`) wait until the gateway has no route again."""
        import httpx

        from serve.up import free_port

        port = free_port()
        name = f"node{i}"
        t0 = time.monotonic()
        node = self._spawn(name, [
            "node", "--model", self.version, "--layers", f"0:{self.layers}", "--port",
            str(port), "--join", f"@{self.invite_file}", "--threads", "1", "--announce-url",
            f"ws://127.0.0.1:{port}"])
        deadline = t0 + self.cfg.routed_timeout_s
        visible, node_id = None, None
        body = {"model": "default", "prompt": "hello", "max_tokens": 1, "temperature": 0}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(timeout=30) as http:
            while True:
                self._alive(node, name)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no request was routed through {name} in "
                                       f"{self.cfg.routed_timeout_s:.0f} s")
                if node_id is None:
                    await reader.refresh()
                    mine = [x for x in reader.listed() if x.pid == node.pid]
                    if mine:
                        visible, node_id = time.monotonic() - t0, mine[0].node_id
                r = await http.post(f"{self.url}/v1/completions", json=body, headers=headers)
                if r.status_code == 200:
                    routed = time.monotonic() - t0
                    route = r.json()["shoal"]["route"]
                    break
                if r.status_code != 503:
                    raise RuntimeError(f"the gateway answered {r.status_code}: {r.text[:300]}")
                await asyncio.sleep(0.1)
            if node_id is not None and route != [node_id]:
                raise RuntimeError(f"the first completion went through {route}, not {node_id}")
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
            while not last and (await http.get(f"{self.url}/health")).status_code == 200:
                if time.monotonic() > deadline + self.cfg.routed_timeout_s:
                    raise RuntimeError(f"the gateway still routes through killed {name}")
                await asyncio.sleep(0.2)
        return {"start_to_visible_s": visible, "start_to_routed_s": routed}

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


async def _measure(cfg: DiscoveryBenchConfig, n: int, log_dir: Path,
                   shoal_cfg: ShoalConfig | None) -> dict:
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
    routed = _Routed(cfg, shoal_cfg, invite, log_dir, n) if cfg.routed else None
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
        if routed is not None:  # its start (imports, checkout) overlaps the removals' waits
            routed.spawn_gateway()
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
        samples = []
        if routed is not None:
            await routed.wait_gateway()
            samples = [await routed.sample(reader, i, i == cfg.routed - 1)
                       for i in range(cfg.routed)]
        return {"nodes": n, "start_to_visible": mean_ci(start_to_visible),
                "announce_to_visible": mean_ci(announce_to_visible),
                "lookups_per_s": round(lookup_rate, 1), "lookups": lookups,
                "death_to_removal": mean_ci(removal),
                "removal_bound_s": cfg.ttl_s + member.rpc_timeout_s,
                "start_to_routed": mean_ci([x["start_to_routed_s"] for x in samples])
                if samples else None,
                "routed_samples": samples}
    finally:
        if routed is not None:
            routed.stop()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        reader.peer.stop()


def run_discovery_bench(cfg: DiscoveryBenchConfig, shoal_cfg: ShoalConfig | None = None) -> dict:
    """Every size in turn; writes `discovery.json` and `discovery.png` to `cfg.out_dir`. The
    routed part's processes use `shoal_cfg`'s home and registry (default: the environment's)."""
    if cfg.routed and shoal_cfg is None:
        from flows.config import ShoalConfig

        shoal_cfg = ShoalConfig.from_env()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = cfg.out_dir / "discovery-logs"
    log_dir.mkdir(exist_ok=True)
    runs = [asyncio.run(_measure(cfg, n, log_dir, shoal_cfg)) for n in cfg.sizes]
    report = {"config": {"sizes": cfg.sizes, "lookup_s": cfg.lookup_s, "kills": cfg.kills,
                         "ttl_s": cfg.ttl_s, "announce_s": cfg.announce_s,
                         "routed": cfg.routed, "model": cfg.model if cfg.routed else None,
                         "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]},
              "runs": runs,
              "summary": {str(r["nodes"]): {
                  "start_to_visible_s": r["start_to_visible"]["mean_s"],
                  "death_to_removal_s": r["death_to_removal"]["mean_s"],
                  "start_to_routed_s": (r["start_to_routed"] or {}).get("mean_s"),
                  "lookups_per_s": r["lookups_per_s"]} for r in runs}}
    (cfg.out_dir / "discovery.json").write_text(json.dumps(report, indent=1))
    _plot(runs, cfg.out_dir / "discovery.png")
    return report


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("start_to_visible", "start → visible"), ("death_to_removal", "death → removal")]
    if all(r["start_to_routed"] for r in runs):
        keys.append(("start_to_routed", "node start → first routed request"))
    fig, (times, rate) = plt.subplots(1, 2, figsize=(10, 3.5))
    sizes = [str(r["nodes"]) for r in runs]
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        means = [r[key]["mean_s"] for r in runs]
        errs = [[m - r[key]["ci95_s"][0] for m, r in zip(means, runs)],
                [r[key]["ci95_s"][1] - m for m, r in zip(means, runs)]]
        times.bar([i + (k - (len(keys) - 1) / 2) * width for i in range(len(runs))], means,
                  width, yerr=errs, label=label)
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
