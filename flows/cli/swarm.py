"""`shoal swarm …`: private swarms on the DHT (serve/invite.py).

`shoal swarm invite` makes a new swarm's invite (a fresh membership secret) or, given one,
re-issues it with more bootstrap peers. Whoever holds the invite can read and write the swarm's
records; give it only to the nodes and gateways of the swarm.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from flows.cli.base import command, fail, group

cli = typer.Typer()
"""What this module adds to `shoal`: the `swarm` group."""
swarm_app = group(cli, "swarm", "Private swarms on the DHT: invites.")


@command(swarm_app, "invite")
def invite(peer: Annotated[Optional[list[str]], typer.Option(
               "--peer", help="HOST:PORT of a DHT peer of the swarm (a node's or gateway's "
               "--dht-port); repeatable")] = None,
           name: Annotated[str, typer.Option(help="the swarm's name")] = "private",
           of: Annotated[Optional[str], typer.Option(
               "--of", help="an existing invite: keep its swarm and secret, add the peers")]
           = None) -> None:
    """Print an invite: swarm name, membership secret and bootstrap peers, as one token for
    `shoal node --join` and `shoal gateway --join`."""
    from serve.exceptions import InviteError
    from serve.invite import decode_invite, new_invite, parse_peer

    try:
        peers = [parse_peer(p) for p in peer or []]
        made = decode_invite(of).with_peers(peers) if of else new_invite(name, peers)
    except InviteError as exc:
        fail(str(exc))
    typer.echo(made.encode())
