"""What every `shoal` command module shares, and the one way to declare a command.

`command(typer_app)` registers a function as a command and reports the stages' own errors
(registry, serve, traces, curate, train, and `ValueError` for bad input) as one line,
`error: …`, with exit code 1. `config()` is the only place a command reads its `ShoalConfig`.

Command modules import this module and nothing else of `flows.cli`; the package `__init__` lists
their commands and imports a module when one of them is used. Only typer is imported here: stage
code is imported inside the commands, and the stage exception classes only once a command raised.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Callable, NoReturn, TypeVar

import typer

# Prefect's ephemeral API server gets 20 s to start by default; on a fresh machine it first creates
# and migrates its database, and a running swarm keeps the cores busy meanwhile. An explicit
# setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

if TYPE_CHECKING:
    from flows.config import ShoalConfig

F = TypeVar("F", bound=Callable[..., object])

DEFAULT_MODEL = "production"
"""The registry reference a command uses when none is given: the production channel."""


def group(parent: typer.Typer, name: str, help: str) -> typer.Typer:
    """A command group `NAME …` of `parent` that shows its help when called without a
    subcommand."""
    sub = typer.Typer(name=name, help=help, no_args_is_help=True)
    parent.add_typer(sub)
    return sub


def config() -> ShoalConfig:
    """The configuration of this process (`$SHOAL_HOME`, registry URL, key passphrase)."""
    from flows.config import ShoalConfig

    return ShoalConfig.from_env()


def fail(message: str) -> NoReturn:
    """Print `error: MESSAGE` on stderr and exit with code 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _stage_errors() -> tuple[type[Exception], ...]:
    from curate.exceptions import CurationError
    from registry.exceptions import RegistryError
    from serve.exceptions import ServeError
    from traces.exceptions import TraceStoreError
    from train.exceptions import TrainError

    return RegistryError, ServeError, TraceStoreError, CurationError, TrainError, ValueError


def reports_errors(func: F) -> F:
    """`func`, with the stages' own exceptions turned into one clear line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, _stage_errors()):
                fail(str(exc))
            raise

    return wrapper  # type: ignore[return-value]


def command(typer_app: typer.Typer, name: str | None = None) -> Callable[[F], F]:
    """Register the decorated function as command `name` (default: the function's name) of
    `typer_app`, reporting stage errors as one line. The function itself is returned unchanged,
    so Python callers still get the exceptions."""

    def register(func: F) -> F:
        typer_app.command(name)(reports_errors(func))
        return func

    return register
