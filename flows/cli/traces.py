"""`shoal traces …` and `shoal grants …`: the trace store from the command line.

Contributors usually act through the gateway's API with their own key; these commands are the
same operations run directly on the store in $SHOAL_HOME/traces (a maintainer's tools).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from flows.cli.base import command, config, group

if TYPE_CHECKING:
    from traces.store import TraceStore

cli = typer.Typer()
"""What this module adds to `shoal`: the `traces` and `grants` groups."""
traces_app = group(cli, "traces", "Consented traces: list, export, delete, erase; the embedder.")
grants_app = group(cli, "grants", "Consent grants of contributors.")


def _store() -> TraceStore:
    return config().trace_store()


@command(traces_app, "list")
def list_traces(contributor: Optional[str] = None, model: Optional[str] = None,
                min_rating: Optional[int] = None, limit: int = 20) -> None:
    """Traces by contributor, model version and rating, newest first."""
    for r in _store().query(contributor_id=contributor, model_version=model,
                            min_rating=min_rating, limit=limit):
        typer.echo(f"{r['request_id']}  {r['created_at']:%Y-%m-%d %H:%M}  {r['contributor_id']}  "
                   f"{','.join(r['grant_scopes']):12} {r['completion'][:50]!r}")


@command(traces_app, "export")
def export(contributor: Annotated[str, typer.Option()]) -> None:
    """A contributor's traces and feedback as JSON lines."""
    typer.echo(_store().export_jsonl(contributor), nl=False)


@command(traces_app, "erase")
def erase(contributor: Annotated[str, typer.Option()]) -> None:
    """Erase every trace, feedback row and grant of a contributor; prints the receipt."""
    import json

    typer.echo(json.dumps(_store().erase_contributor(contributor), indent=2))


@command(grants_app, "create")
def create_grant(contributor: Annotated[str, typer.Option(help="account id")],
                 scope: Annotated[list[str], typer.Option("--scope")],
                 days: float = 30.0) -> None:
    """Grant consent for a contributor (as they would with POST /v1/grants)."""
    store = _store()
    g = store.create_grant(store.account(contributor), scope, days)
    typer.echo(f"grant {g.grant_id}  {','.join(g.scopes)}  until {g.expires_at:%Y-%m-%d}")


@command(grants_app, "list")
def list_grants(contributor: Annotated[str, typer.Option()]) -> None:
    for g in _store().grants(contributor):
        state = "revoked" if g.revoked else "active"
        typer.echo(f"{g.grant_id}  {','.join(g.scopes):16} until {g.expires_at:%Y-%m-%d}  {state}")


@command(traces_app, "delete")
def delete_trace(request_id: Annotated[str, typer.Argument(
        help="the request id (`shoal.request_id` of the response, or `traces list`)")]) -> None:
    """Erase one trace and everything derived from it; prints the receipt."""
    import json

    store = _store()
    owner = store.account(store.get(request_id)["contributor_id"])
    typer.echo(json.dumps(store.delete_trace(owner, request_id), indent=2))


@command(grants_app, "revoke")
def revoke_grant(grant_id: str, contributor: Annotated[str, typer.Option(help="account id")]
                 ) -> None:
    """Revoke a contributor's grant (as they would with DELETE /v1/grants/{id}): no new traces
    are kept under it; those already kept stay until erased."""
    store = _store()
    store.revoke_grant(store.account(contributor), grant_id)
    typer.echo(f"revoked grant {grant_id}")


@command(traces_app, "embedder")
def embedder(name: Annotated[str, typer.Argument(help="static, minilm or minilm-int8")] = "static"
             ) -> None:
    """Build an embedder if it is not built yet (the static one is distilled from the packaged
    MiniLM once per machine, about a minute on 2 cores) and print its version."""
    from traces.embedders import load

    typer.echo(load(name).version)
