"""`shoal traces …` and `shoal grants …`: the trace store from the command line.

Contributors usually act through the gateway's API with their own key; these commands are the
same operations run directly on the store in $SHOAL_HOME/traces (a maintainer's tools).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

traces_app = typer.Typer(help="Consented traces: list, export, delete, erase.",
                         no_args_is_help=True)
grants_app = typer.Typer(help="Consent grants of contributors.", no_args_is_help=True)


def _store():
    from flows.config import ShoalConfig

    return ShoalConfig.from_env().trace_store()


@traces_app.command("list")
def list_traces(contributor: Optional[str] = None, model: Optional[str] = None,
                min_rating: Optional[int] = None, limit: int = 20) -> None:
    """Traces by contributor, model version and rating, newest first."""
    for r in _store().query(contributor_id=contributor, model_version=model,
                            min_rating=min_rating, limit=limit):
        typer.echo(f"{r['request_id']}  {r['created_at']:%Y-%m-%d %H:%M}  {r['contributor_id']}  "
                   f"{','.join(r['grant_scopes']):12} {r['completion'][:50]!r}")


@traces_app.command("export")
def export(contributor: Annotated[str, typer.Option()]) -> None:
    """A contributor's traces and feedback as JSON lines."""
    typer.echo(_store().export_jsonl(contributor), nl=False)


@traces_app.command("erase")
def erase(contributor: Annotated[str, typer.Option()]) -> None:
    """Erase every trace, feedback row and grant of a contributor; prints the receipt."""
    import json

    typer.echo(json.dumps(_store().erase_contributor(contributor), indent=2))


@grants_app.command("create")
def create_grant(contributor: Annotated[str, typer.Option(help="account id")],
                 scope: Annotated[list[str], typer.Option("--scope")],
                 days: float = 30.0) -> None:
    """Grant consent for a contributor (as they would with POST /v1/grants)."""
    store = _store()
    g = store.create_grant(store.account(contributor), scope, days)
    typer.echo(f"grant {g.grant_id}  {','.join(g.scopes)}  until {g.expires_at:%Y-%m-%d}")


@grants_app.command("list")
def list_grants(contributor: Annotated[str, typer.Option()]) -> None:
    for g in _store().grants(contributor):
        state = "revoked" if g.revoked else "active"
        typer.echo(f"{g.grant_id}  {','.join(g.scopes):16} until {g.expires_at:%Y-%m-%d}  {state}")


def bench_traces(requests: int = 1000, ingest: int = 2000,
                 out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """Trace-path latency (p50/p99) and LanceDB ingest rate."""
    import json
    from pathlib import Path

    from traces.bench import run_traces_bench

    typer.echo(json.dumps(run_traces_bench(Path(out), requests, ingest), indent=2))


def register(app: typer.Typer) -> None:
    from flows.cli_serve import bench_app

    from flows.cli import reports_errors

    for sub in (traces_app, grants_app):
        for command in sub.registered_commands:
            command.callback = reports_errors(command.callback)
    app.add_typer(traces_app, name="traces")
    app.add_typer(grants_app, name="grants")
    bench_app.command("traces")(reports_errors(bench_traces))
