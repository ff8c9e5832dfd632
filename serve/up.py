"""`shoal up`: a whole swarm on loopback — tracker, N node processes splitting the layers, the
gateway, and optionally a latency relay in front of every hop.

`LocalSwarm` is also what the tests and benchmarks use to start real processes. It writes the
processes' pids and addresses to `<home>/run/swarm.json` and stops everything on `stop()`.
`serve_until_stopped` is `shoal up`'s loop: SIGTERM or SIGINT (at any moment, starting included)
stops every child; a crashed node is reported with the tail of its log and started again (its
replicas, where the swarm has them, keep serving meanwhile); a crashed tracker, gateway or relay
is reported and stops the swarm.

The swarm's gateway signs with the key `gateway` in `<home>/keys` (created on first start), and
the tracker accepts verdicts from that key only: the local gateway can evict a node for every
reader of the tracker, and nobody else can.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from serve.exceptions import ServeError

if TYPE_CHECKING:
    from registry.signing import SigningKey
    from serve.invite import Invite

GATEWAY_KEY = "gateway"
"""Name of the swarm gateway's signing key in `<home>/keys`."""
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback TCP port that is free now and that no outgoing connection will take.

    A port from `bind(0)` lies in the kernel's ephemeral range, so in the seconds between choosing
    it and the server binding it (the server imports first) any client connection on this host can
    get it as its local port, and the server then fails to start. Ports below that range are only
    ever taken by an explicit bind, so pick a random one there that binds now and that this process
    has not handed out before.
    """
    low = _ephemeral_low()
    start = max(1024, low - 12000)
    rng = random.Random(time.time_ns() ^ os.getpid())
    for _ in range(256):
        port = rng.randrange(start, low)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise ServeError(f"no free loopback port in {start}..{low - 1}")


def even_spans(num_layers: int, nodes: int) -> list[tuple[int, int]]:
    if not 1 <= nodes <= num_layers:
        raise ServeError(f"cannot split {num_layers} layers over {nodes} nodes")
    edges = [round(i * num_layers / nodes) for i in range(nodes + 1)]
    return list(zip(edges[:-1], edges[1:]))


@dataclass
class SwarmSpec:
    model: str = "production"
    """Registry reference every process resolves (name@channel, channel or version)."""
    nodes: int = 3
    spans: list[tuple[int, int]] | None = None
    """Explicit spans (overlaps and replicas allowed); default: `nodes` even spans."""
    port: int = 0
    """Gateway HTTP port (0: pick a free one)."""
    delay_ms: float = 0.0
    """One-way delay added to every hop (gateway->node, node->node, node->gateway)."""
    api_keys: list[str] = field(default_factory=list)
    chain: bool = True
    wire_dtype: str = "float32"
    threads_per_node: int = 1
    timeout_s: float = 60.0
    log_dir: Path | None = None
    relay: bool | None = None
    """Put a latency relay in front of every hop (default: when delay_ms > 0). Its delay can be
    changed while running with `LocalSwarm.set_delay`."""
    gateway: bool = True
    """Start a gateway process; without one, `return_url` is for an in-process gateway."""
    drafter: str = "prompt_lookup"
    """The gateway's default drafter ('off' for none)."""
    draft_model: str | None = None
    """Registry ref of a draft model to load at the gateway."""
    verify: bool = True
    """Gateway checks nodes with live-weight proofs and fingerprints."""
    traces: bool = False
    """Give the gateway a trace store in <home>/traces (accounts replace the static keys)."""
    verify_interval_s: float = 30.0
    verify_new_interval_s: float = 2.0
    node_module: str | None = None
    """Run nodes with `python -m MODULE` instead of `shoal node` (tests start cheating nodes)."""
    node_args: list[list[str]] | None = None
    """Extra arguments per node (same order as the spans)."""
    watch: str | None = None
    """Nodes and gateway follow this channel and roll out its new versions."""
    watch_poll_s: float = 1.0
    drain_grace_s: float = 5.0
    tracker_max_nodes: int | None = None
    """Most records the tracker holds (None: `TrackerConfig`'s default)."""
    key_passphrase: str | None = None
    """Passphrase of the gateway key in `<home>/keys` (given to every process of the swarm)."""
    spot_check_sessions: float | None = None
    """Share of sessions the gateway mirrors and audits (None: `VerifierConfig`'s default)."""
    nodes_follow_gateway: bool = False
    """Nodes work for this swarm's gateway key only (`shoal node --gateway-key`)."""
    batch_sessions: int | None = None
    """Batch lines the gateway runs at once on an idle swarm (None: `BatchConfig`'s default)."""
    batch_busy_sessions: int | None = None
    """Batch lines that go on beside interactive requests (None: `BatchConfig`'s default)."""
    dht: bool = False
    """Discovery on a private DHT swarm instead of the tracker: no tracker process; every node
    and gateway runs a DHT peer and joins with one invite whose bootstrap peers are the first
    two nodes' (`LocalSwarm.invite`)."""
    gateways: int = 1
    """Gateway processes; each routes on its own (`LocalSwarm.base_urls`)."""


def gateway_key(home: Path, passphrase: str | None = None) -> SigningKey:
    """The swarm gateway's signing key in `<home>/keys`, created the first time."""
    from registry.signing import SigningKey, load_key, save_key

    keys = home / "keys"
    if not (keys / f"{GATEWAY_KEY}.pem").exists():
        save_key(SigningKey.generate(GATEWAY_KEY), keys, passphrase)
    return load_key(keys, GATEWAY_KEY, passphrase)


class LocalSwarm:
    def __init__(self, spec: SwarmSpec, home: Path, num_layers: int) -> None:
        self.spec, self.home, self.num_layers = spec, home, num_layers
        self.procs: dict[str, subprocess.Popen] = {}
        self.node_ports: list[int] = []
        self.base_url = ""
        self.tracker_url = ""
        self.log_dir = spec.log_dir or home / "run" / "logs"
        self.delay_file = home / "run" / "delay_ms"
        self.return_port = 0
        self.return_url = ""
        self.gateway_key: SigningKey | None = None
        """The key the swarm's gateway signs with (an in-process gateway may use it too)."""
        self.base_urls: list[str] = []
        """Every gateway's URL (`base_url` is the first)."""
        self.invite: Invite | None = None
        """The private swarm's invite (DHT discovery only)."""
        self.dht_ports: dict[str, int] = {}
        """Process name -> the UDP port of its DHT peer (DHT discovery only)."""

    def _spawn(self, name: str, args: list[str], module: str = "flows.cli") -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "wb")
        env = {**os.environ, "SHOAL_HOME": str(self.home), "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": str(self.spec.threads_per_node)}
        env.pop("SHOAL_KEY_PASSPHRASE", None)
        if self.spec.key_passphrase:
            env["SHOAL_KEY_PASSPHRASE"] = self.spec.key_passphrase
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start(self, wait_s: float = 180.0) -> "LocalSwarm":
        spec = self.spec
        spans = spec.spans or even_spans(self.num_layers, spec.nodes)
        self.gateway_key = gateway_key(self.home, spec.key_passphrase)
        if spec.dht:
            self._make_invite(len(spans))
        else:
            tracker_port = free_port()
            self.tracker_url = f"http://127.0.0.1:{tracker_port}"
            tracker_args = ["tracker", "--port", str(tracker_port),
                            "--verdict-key", self.gateway_key.public_hex]
            if spec.tracker_max_nodes is not None:
                tracker_args += ["--max-nodes", str(spec.tracker_max_nodes)]
            self._spawn("tracker", tracker_args)
        relays: list[tuple[int, int]] = []
        use_relay = spec.relay if spec.relay is not None else spec.delay_ms > 0

        def relayed(port: int) -> int:
            if not use_relay:
                return port
            front = free_port()
            relays.append((front, port))
            return front

        for i, (start, end) in enumerate(spans):
            port = free_port()
            self.node_ports.append(port)
            args = ["node", "--model", spec.model, "--layers", f"{start}:{end}", "--port",
                    str(port), *self._discovery_args(f"node{i}"), "--threads",
                    str(spec.threads_per_node), "--announce-url", f"ws://127.0.0.1:{relayed(port)}"]
            if spec.node_args:
                args += spec.node_args[i]
            if spec.nodes_follow_gateway:
                args += ["--gateway-key", self.gateway_key.public_hex]
            args += self._watch_args()
            self._spawn(f"node{i}", args, module=spec.node_module or "flows.cli")
        self.return_port = free_port()
        self.return_url = f"ws://127.0.0.1:{relayed(self.return_port)}"
        if spec.gateway:
            args = ["--wire-dtype", spec.wire_dtype, "--timeout", str(spec.timeout_s),
                    "--key", GATEWAY_KEY]
            for key in spec.api_keys:
                args += ["--api-key", key]
            args += ["--drafter", spec.drafter]
            if not spec.verify:
                args.append("--no-verify")
            if spec.traces:
                args += ["--traces", str(self.home / "traces")]
            args += ["--verify-interval", str(spec.verify_interval_s),
                     "--verify-new-interval", str(spec.verify_new_interval_s)]
            if spec.draft_model:
                args += ["--draft-model", spec.draft_model]
            if spec.spot_check_sessions is not None:
                args += ["--spot-check-sessions", str(spec.spot_check_sessions)]
            if spec.batch_sessions is not None:
                args += ["--batch-sessions", str(spec.batch_sessions)]
            if spec.batch_busy_sessions is not None:
                args += ["--batch-busy-sessions", str(spec.batch_busy_sessions)]
            if not spec.chain:
                args.append("--naive")
            for g in range(spec.gateways):
                name = "gateway" if g == 0 else f"gateway{g}"
                gw_port = (spec.port if g == 0 else 0) or free_port()
                return_port = self.return_port if g == 0 else free_port()
                return_url = (self.return_url if g == 0
                              else f"ws://127.0.0.1:{relayed(return_port)}")
                self._spawn(name, ["gateway", "--model", spec.model,
                                   *self._discovery_args(name), "--port", str(gw_port),
                                   "--return-port", str(return_port), "--return-url",
                                   return_url, *args, *self._watch_args()])
                self.base_urls.append(f"http://127.0.0.1:{gw_port}")
            self.base_url = self.base_urls[0]
        if relays:
            self.set_delay(spec.delay_ms)
            self._spawn("relay", ["relay", "--delay-ms", str(spec.delay_ms), "--delay-file",
                                  str(self.delay_file), *[f"{a}:{b}" for a, b in relays]])
        self._write_state(ready=False)
        self.wait_ready(wait_s, spans)
        self._write_state(ready=True)
        return self

    def _make_invite(self, nodes: int) -> None:
        """A new private swarm: a DHT port for every process, the first two nodes' as the
        invite's bootstrap peers."""
        from serve.invite import Peer, new_invite

        names = [f"node{i}" for i in range(nodes)] + ["gateway"] + [
            f"gateway{g}" for g in range(1, self.spec.gateways)]
        self.dht_ports = {name: free_port() for name in names}
        self.invite = new_invite("local", [Peer(host="127.0.0.1", port=self.dht_ports[n])
                                           for n in names[:min(2, nodes)]])

    def _discovery_args(self, name: str) -> list[str]:
        if self.invite is None:
            return ["--tracker", self.tracker_url]
        return ["--join", self.invite.encode(), "--dht-port", str(self.dht_ports[name])]

    def _watch_args(self) -> list[str]:
        spec = self.spec
        if not spec.watch:
            return []
        return ["--watch", spec.watch, "--watch-poll", str(spec.watch_poll_s),
                "--drain-grace", str(spec.drain_grace_s)]

    def set_delay(self, delay_ms: float) -> None:
        """Change the one-way delay of every relayed hop (takes effect within ~50 ms)."""
        self.delay_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.delay_file.with_suffix(".tmp")
        tmp.write_text(str(delay_ms))
        os.replace(tmp, self.delay_file)

    def wait_ready(self, wait_s: float, spans: list[tuple[int, int]]) -> None:
        """Wait until the gateway has a route (or, without one, every node has announced)."""
        import httpx

        deadline = time.monotonic() + wait_s
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.stop()
                    raise ServeError(f"{name} exited with {proc.returncode}; see "
                                     f"{self.log_dir / (name + '.log')}")
            try:
                if self.spec.gateway:
                    waiting = [u for u in self.base_urls
                               if httpx.get(f"{u}/health", timeout=2).status_code != 200]
                    if not waiting:
                        return
                    last = f"no route yet at {', '.join(waiting)}"
                else:
                    nodes = httpx.get(f"{self.tracker_url}/nodes", timeout=2).json()
                    if len(nodes) == len(spans):
                        return
                    last = f"{len(nodes)} of {len(spans)} nodes announced"
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.5)
        self.stop()
        raise ServeError(f"swarm not ready after {wait_s:.0f} s: {last}")

    def _write_state(self, *, ready: bool) -> None:
        """`<home>/run/swarm.json`: addresses, pids, and whether the swarm has become ready
        since its last (re)start. Replaced atomically, so a reader never sees half of it."""
        run = self.home / "run"
        run.mkdir(parents=True, exist_ok=True)
        tmp = run / "swarm.json.tmp"
        tmp.write_text(json.dumps({
            "base_url": self.base_url, "tracker": self.tracker_url, "ready": ready,
            "pids": {n: p.pid for n, p in self.procs.items()}}, indent=1))
        os.replace(tmp, run / "swarm.json")

    def restart(self, name: str) -> None:
        """Start a stopped or killed process again with the same arguments."""
        proc = self.procs[name]
        if proc.poll() is None:
            self.kill(name)
        self._spawn(name, proc.args[3:], module=proc.args[2])
        self._write_state(ready=False)
        self.wait_ready(120, [None] * len(self.node_ports))
        self._write_state(ready=True)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last `lines` lines of a process's log."""
        path = self.log_dir / f"{name}.log"
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 16384))
                text = fh.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, name: str) -> None:
        """SIGKILL one process (a crashed machine, for failover tests)."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> "LocalSwarm":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Stopped(BaseException):
    """SIGTERM or SIGINT reached the process serving the swarm. A `BaseException`, as
    `KeyboardInterrupt` is: raised from the signal handler wherever the process is, it must not
    be swallowed by an `except Exception` on the way (in an HTTP client's retry, say), which
    left `shoal up` serving after SIGINT."""


def serve_until_stopped(swarm: LocalSwarm, say: Callable[[str], None],
                        on_ready: Callable[[], None] = lambda: None, *, poll_s: float = 0.5,
                        max_restarts: int = 3) -> int:
    """Start `swarm` and serve until SIGTERM or SIGINT; stop every child in any case. Returns
    the exit status: 0 when stopped by a signal, 1 when the swarm could not go on.

    A crashed node is reported (exit status and log tail) and restarted, up to `max_restarts`
    times each; any other crashed process ends the swarm, reported the same way."""
    stopping = False

    def on_signal(signum: int, _frame) -> None:
        nonlocal stopping
        if not stopping:  # a second signal must not interrupt the stopping itself
            stopping = True
            raise Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    restarts: dict[str, int] = {}
    try:
        swarm.start()
        on_ready()
        while True:
            time.sleep(poll_s)
            for name, proc in list(swarm.procs.items()):
                if proc.poll() is None:
                    continue
                say(f"{name} exited with status {proc.returncode}; the end of "
                    f"{swarm.log_dir / (name + '.log')}:\n{swarm.log_tail(name)}")
                if not name.startswith("node") or restarts.get(name, 0) >= max_restarts:
                    say(f"stopping the swarm: {name} is not restarted")
                    return 1
                restarts[name] = restarts.get(name, 0) + 1
                say(f"restarting {name} ({restarts[name]} of {max_restarts})")
                swarm.restart(name)
    except Stopped as why:
        say(f"{why}: stopping the swarm")
        return 0
    except ServeError as exc:  # the swarm did not become ready
        say(str(exc))
        return 1
    finally:
        stopping = True
        swarm.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
