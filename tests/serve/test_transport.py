"""The hop transport between hosts: TLS 1.3 pinned to the peer's identity key (serve/transport.py).

Real websockets servers and clients on loopback, and a byte-recording TCP relay between them that
plays the passive listener on the wire."""

from __future__ import annotations

import asyncio

import pytest

from registry.signing import SigningKey
from serve.exceptions import TransportRefused
from serve.identity import load_or_create
from serve.links import Links
from serve.transport import (advertised_host, advertised_url, check_dial, dial, server_context,
                             tls_enabled)

SECRET = b"hidden-state-bytes-" * 8


async def _echo_server(key: SigningKey | None):
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for frame in ws:
            await ws.send(frame)

    return await serve(echo, "127.0.0.1", 0, compression=None,
                       ssl=server_context(key) if key else None)


async def _tap(target_port: int, seen: bytearray):
    """A TCP relay to `target_port` that records every byte passing either way."""

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                seen.extend(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader, writer):
        up_r, up_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _port(server) -> int:
    return server.sockets[0].getsockname()[1]


def test_a_passive_listener_reads_plain_frames_but_not_tls_ones():
    async def run(key):
        server = await _echo_server(key)
        seen = bytearray()
        tap = await _tap(_port(server), seen)
        scheme = "wss" if key else "ws"
        conn = await dial(f"{scheme}://127.0.0.1:{_port(tap)}", key.public_hex if key else None,
                          compression=None)
        await conn.send(SECRET)
        assert await conn.recv() == SECRET
        await conn.close()
        tap.close()
        server.close()
        return bytes(seen)

    # the control: on ws:// the echo (server frames are not masked) is readable on the wire
    assert SECRET in asyncio.run(run(None))
    wire_bytes = asyncio.run(run(SigningKey.generate("node")))
    assert len(wire_bytes) > len(SECRET)
    assert SECRET[:19] not in wire_bytes


def test_the_dialer_pins_the_certificate_to_the_signed_key():
    node, other = SigningKey.generate("node"), SigningKey.generate("other")

    async def run():
        server = await _echo_server(node)
        url = f"wss://127.0.0.1:{_port(server)}"
        try:
            with pytest.raises(TransportRefused) as refused:
                await dial(url, other.public_hex)
            assert refused.value.check == "tls-pin"
            with pytest.raises(TransportRefused):
                await dial(url, None)  # no key to pin: no connection at all
            # a plain websocket client cannot talk to the TLS port
            from websockets.asyncio.client import connect

            with pytest.raises(Exception):
                await asyncio.wait_for(connect(f"ws://127.0.0.1:{_port(server)}"), 5)
            links = Links()
            with pytest.raises(TransportRefused):
                await links.send(url, SECRET, other.public_hex)
            await links.send(url, SECRET, node.public_hex)
            await links.close()
        finally:
            server.close()

    asyncio.run(run())


def test_plain_ws_off_loopback_is_refused_unless_asked_for():
    with pytest.raises(TransportRefused) as refused:
        check_dial("ws://10.0.0.2:7101", "ab" * 32, allow_plain=False)
    assert refused.value.check == "plain"
    check_dial("ws://10.0.0.2:7101", None, allow_plain=True)
    check_dial("ws://127.0.0.1:7101", None, allow_plain=False)
    with pytest.raises(TransportRefused):
        check_dial("http://10.0.0.2:7101", "ab" * 32, allow_plain=True)


def test_bind_and_advertise():
    assert tls_enabled("auto", "127.0.0.1") is False
    assert tls_enabled("auto", "0.0.0.0") is True
    assert tls_enabled("on", "127.0.0.1") is True
    assert tls_enabled("off", "10.0.0.2") is False
    assert advertised_url("0.0.0.0", 7101, "10.0.0.2", True) == "wss://10.0.0.2:7101"
    assert advertised_url("0.0.0.0", 7101, "relay.example:9000", True) == \
        "wss://relay.example:9000"
    assert advertised_url("10.0.0.2", 7101, None, False) == "ws://10.0.0.2:7101"
    assert advertised_url("::1", 7101, None, False) == "ws://[::1]:7101"
    assert advertised_url("0.0.0.0", 7101, "ws://10.0.0.9:1", True) == "ws://10.0.0.9:1"
    with pytest.raises(ValueError, match="--advertise"):
        advertised_url("0.0.0.0", 7101, None, True)
    # a second listener of the process (a rollout's return port) keeps the advertised host
    assert [advertised_host(a) for a in ("10.0.0.5", "10.0.0.5:7200", "wss://gw.example:7200",
                                         "[::1]:7200", None)] == [
        "10.0.0.5", "10.0.0.5", "gw.example", "[::1]", None]


def test_a_key_file_is_created_private_then_reused(tmp_path):
    from registry.exceptions import KeyError_

    path = tmp_path / "keys" / "node.pem"
    first = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create(path).public_hex == first.public_hex
    path.chmod(0o644)
    with pytest.raises(KeyError_, match="too open"):
        load_or_create(path)
    with pytest.raises(KeyError_, match="NAME.pem"):
        load_or_create(tmp_path / "node.key")


def test_the_transport_benchmark_runs(tmp_path):
    from serve.bench_transport import TransportBenchConfig, run_transport_bench

    report = run_transport_bench(TransportBenchConfig(sizes=[1024], rounds=2, trips=3,
                                                      connects=2, out_dir=tmp_path))
    summary = report["summary"]
    assert summary["round_trip"]["1024"]["ws_ms"] > 0 and summary["connect"]["wss_ms"] > 0
    assert (tmp_path / "transport.json").exists() and (tmp_path / "transport.png").exists()


async def _relay():
    from serve.nat_relay import Relay, RelayConfig

    relay = Relay(RelayConfig(host="127.0.0.1", port=0))
    server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
    return relay, server


def test_a_node_behind_nat_is_reached_through_a_relay_that_cannot_read_or_impersonate():
    from serve.nat_relay import Offers
    from serve.records import node_id_of

    node, impostor = SigningKey.generate("node"), SigningKey.generate("impostor")

    async def run():
        behind = await _echo_server(node)  # the node's own TLS port, on its loopback only
        fake = await _echo_server(impostor)
        relay, relay_server = await _relay()
        seen = bytearray()
        tap = await _tap(_port(relay_server), seen)  # the path between dialer and relay
        via = f"127.0.0.1:{_port(tap)}"
        offers = asyncio.create_task(Offers(via, node, _port(behind)).run())
        try:
            for _ in range(100):
                if relay.offers:
                    break
                await asyncio.sleep(0.02)
            url = f"wss://{via}/via/{node_id_of(node.public_hex)}"
            conn = await dial(url, node.public_hex, compression=None)
            await conn.send(SECRET)
            assert await conn.recv() == SECRET
            await conn.close()
            assert relay.spliced == 1 and SECRET[:19] not in bytes(seen)
            # a relay (or anyone) that splices to another key's server fails the pin
            rogue = asyncio.create_task(Offers(via, node, _port(fake)).run())
            await asyncio.sleep(0.2)
            relay.offers[node_id_of(node.public_hex)][:] = relay.offers[
                node_id_of(node.public_hex)][-1:]  # only the rogue's newest offer is left
            with pytest.raises(TransportRefused, match="tls-pin"):
                await dial(url, node.public_hex)
            rogue.cancel()
            with pytest.raises(TransportRefused, match="relay"):  # the id is not the key's
                await dial(url, impostor.public_hex)
            # an unsigned offer holds nothing at the relay
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(relay_server))
            writer.write(f"SHOAL-OFFER {impostor.public_hex} 0 00\n".encode())
            await writer.drain()
            assert await reader.read() == b""
            assert node_id_of(impostor.public_hex) not in relay.offers
        finally:
            offers.cancel()
            for server in (behind, fake, relay_server, tap):
                server.close()

    asyncio.run(run())


def test_one_address_cannot_push_real_nodes_out_of_a_relay():
    """Keys are free: a host signing offers for fresh keys fills only its own share of the relay,
    and one dialing host holds a bounded number of spliced connections."""
    from serve.nat_relay import Relay, RelayConfig, offer_line
    from serve.records import node_id_of

    async def run():
        relay = Relay(RelayConfig(host="127.0.0.1", port=0, max_nodes=8, max_ids_per_address=4,
                                  max_dials_per_address=2, offer_wait_s=0.2))
        server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
        port = _port(server)
        real = SigningKey.generate("real")
        relay.offers[node_id_of(real.public_hex)] = []  # a real node's entry, from elsewhere
        writers = []
        for _ in range(12):  # an attacker's fresh keys, all from one address
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(offer_line(SigningKey.generate("sybil")))
            await writer.drain()
            writers.append(writer)
        await asyncio.sleep(0.2)
        assert node_id_of(real.public_hex) in relay.offers
        assert len(relay.offers) == 1 + 4  # the real node, and the attacker's share only
        dialers = []
        for _ in range(4):  # dials for an id with no offer wait; beyond 2 at once are refused
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"SHOAL-DIAL " + b"0" * 32 + b"\n")
            await writer.drain()
            dialers.append(reader)
        await asyncio.sleep(0.05)
        refused = [await _closed_soon(r) for r in dialers[2:]]
        assert refused == [True, True]
        for w in writers:
            w.close()
        server.close()

    asyncio.run(run())


async def _closed_soon(reader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.1) == b""
    except asyncio.TimeoutError:
        return False
