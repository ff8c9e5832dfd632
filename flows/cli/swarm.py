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
           = None,
           root_fingerprint: Annotated[Optional[str], typer.Option(
               help="the registry's fingerprint (`shoal registry show`) joiners pin; default: "
               "this home's registry, if it has one; 'none' for no registry")] = None) -> None:
    """Print an invite: swarm name, membership secret, bootstrap peers and the registry's
    fingerprint, as one token for `shoal node --join` and `shoal gateway --join`."""
    from serve.exceptions import InviteError
    from serve.invite import decode_invite, new_invite, parse_peer

    try:
        peers = [parse_peer(p) for p in peer or []]
        made = decode_invite(of).with_peers(peers) if of else new_invite(name, peers)
    except InviteError as exc:
        fail(str(exc))
    fingerprint = _local_fingerprint() if root_fingerprint is None else root_fingerprint
    if fingerprint and fingerprint != "none":
        if len(fingerprint) != 64 or fingerprint.strip("0123456789abcdef"):
            fail(f"--root-fingerprint {fingerprint!r}: expected 64 lowercase hex digits")
        made = made.model_copy(update={"registry": fingerprint})
    elif fingerprint == "none":
        made = made.model_copy(update={"registry": None})
    typer.echo(made.encode())
    typer.echo(f"registry fingerprint: {made.registry or 'none (joiners need --root-fingerprint)'}",
               err=True)


def _local_fingerprint() -> str | None:
    """The fingerprint of this home's registry, or None when it has none (or cannot be read)."""
    from flows.cli.base import config
    from registry.client import root_fingerprint
    from registry.layout import root as root_file

    try:
        return root_fingerprint(config().store().read(root_file(1)))
    except Exception:  # no registry here: the invite names none
        return None
