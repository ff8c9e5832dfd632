"""The `shoal` command line: one typer app whose command modules are imported when used.

| module     | adds to `shoal`                                                        |
|------------|------------------------------------------------------------------------|
| `registry` | `promote`, `rollback`, `keys …`, `model …`, `channel …`, `registry …`  |
| `serve`    | `chat`, `tracker`, `node`, `gateway`, `relay`, `nat-relay`, `up`           |
| `inspection` | `verify`, `status`, `usage`                                          |
| `flow`     | `demo`, `flow …` (curate, train, evaluate, register)                   |
| `traces`   | `traces …`, `grants …`                                                 |
| `swarm`    | `swarm invite` (private swarms on the DHT)                             |
| `bench`    | `bench …` (swarm, registry, traces, curate, train)                     |

Each module holds its commands in one typer app, `cli`, and declares them with `base.command`
(one `error: …` line and exit code 1 for the stages' errors). The modules import only `base`;
nothing imports this package back.

`ENTRIES` lists every top-level command with its module and the summary `shoal --help` shows, so
`shoal --help` imports no command module (`serve`'s option defaults come from pydantic configs,
which take longer to import than the rest of the help). A command's module is imported when the
command runs or shows its own help; the tests check that `ENTRIES` matches the modules.
`python -m flows.cli …` runs the same app (`serve.up` starts swarm processes that way).
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

ENTRIES: dict[str, tuple[str, str]] = {
    # name: (module under flows.cli, summary listed by `shoal --help`), in the order listed
    "promote": ("registry", "Point CHANNEL at VERSION with a new signed record."),
    "rollback": ("registry", "Point CHANNEL back at an older version (a new, higher record)."),
    "chat": ("serve", "Answer PROMPT in-process from a verified checkout (the swarm's reference "
                      "path)."),
    "demo": ("flow", "The whole flywheel: genesis, swarm, workload, curate, train, gate, "
                     "promote, roll out."),
    "tracker": ("serve", "Run the tracker that nodes announce to and gateways read."),
    "node": ("serve", "Serve layers START:END of a verified registry version (or the span the "
                      "swarm needs)."),
    "gateway": ("serve", "Run the OpenAI-compatible gateway in front of the swarm (dashboard at "
                "/dashboard)."),
    "relay": ("serve", "Relay loopback ports with a one-way delay each way (latency emulation)."),
    "nat-relay": ("serve", "Relay connections to nodes behind NAT (`shoal node --via`), splicing "
                           "TLS it cannot read."),
    "up": ("serve", "Start a local swarm (tracker, NODES nodes, gateway) and serve until Ctrl-C "
                    "or SIGTERM,\nwhich stop every process it started; a crashed node is "
                    "reported and restarted."),
    "verify": ("inspection", "Challenge one node: live-weight proofs (and a canary fingerprint) "
                        "against the registry."),
    "status": ("inspection", "Nodes (span, versions, trust, channel watch, load), the gateway's "
                        "rollout, and the channel\nheads, in one view."),
    "usage": ("inspection", "Metered usage from the gateway (GET /v1/usage): tokens, requests and "
                       "batch lines per key;\npositions computed and checks per node. JSON or "
                       "CSV, for settlement."),
    "keys": ("registry", "Signing keys (maintainer roles, node identities)."),
    "model": ("registry", "Model versions in the registry."),
    "channel": ("registry", "Channels and their promotion history."),
    "registry": ("registry", "The registry itself: create it, rotate its root."),
    "bench": ("bench", "Benchmarks: programs that write JSON and a PNG plot."),
    "traces": ("traces", "Consented traces: list, export, delete, erase; the embedder."),
    "grants": ("traces", "Consent grants of contributors."),
    "flow": ("flow", "Prefect flows: curate, train, evaluate, register."),
    "swarm": ("swarm", "Private swarms on the DHT: invites."),
}

Command = TyperCommand | TyperGroup


def module_commands(module: str) -> dict[str, Command]:
    """The top-level commands and groups of `flows.cli.MODULE`, by name (imports the module)."""
    cli = importlib.import_module(f"{__name__}.{module}").cli
    return dict(typer.main.get_group(cli).commands)


def load(name: str) -> Command:
    """The command or group `shoal NAME`, built from its module."""
    return module_commands(ENTRIES[name][0])[name]


class _Entry(TyperCommand):
    """`shoal NAME` as the root's help lists it; parsing its arguments loads the real command."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: typer.Context | None = None, **extra: Any) -> typer.Context:
        return load(self.name).make_context(info_name, args, parent=parent, **extra)


class _Root(TyperGroup):
    """The `shoal` group: one `_Entry` per name in `ENTRIES`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, (_, summary) in ENTRIES.items():
            self.add_command(_Entry(name=name, help=summary))


app = typer.Typer(cls=_Root, help="shoal: serve open-weight models on a swarm and improve them "
                  "from use.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    pass  # typer builds a group only for an app with a callback or registered commands


def main() -> None:  # pragma: no cover - console entry point
    """Run `shoal` with the process's arguments."""
    app()


__all__ = ["ENTRIES", "app", "load", "main", "module_commands"]
