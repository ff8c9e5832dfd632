"""`python -m flows.cli …`: the `shoal` command line run as a module (how `serve.up` starts the
swarm's processes)."""

from flows.cli import main

main()
