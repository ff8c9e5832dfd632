"""Where a new node should serve: the span of layers that most raises the swarm's weakest
throughput (Petals' rule for choosing blocks), from what discovery lists.

Each layer's throughput is the sum, over the nodes serving it that this reader does not hold
evicted, of what such a node pushes through its whole span: 1000 / (ms per token-layer × span
length) tokens/s, from its signed record. The speed is the node's own claim, so none counts as
faster than 1 ms per token-layer (the unmeasured default): a record claiming near-zero time
cannot make its layers look served by one fake node. Fake records still count as nodes (a key
costs nothing), so an operator who distrusts the listing passes `--layers`. A new
node of `length` layers takes the window whose throughputs, sorted weakest first, are
lexicographically smallest: the window holding the weakest layer (uncovered layers count 0),
and among those the one whose next-weakest is weakest, the earliest on a tie.

How many layers a node holds comes from the weights it can afford (`layers_that_fit`): the
manifest gives every tensor's size, so the bytes of each layer are known before anything is
downloaded.

It knows nothing about the network, the node's loading or routing. Moving a running node to
another span when the swarm changes (Petals re-balances) is not done here: a node keeps the
span it chose at start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from serve.exceptions import ServeError

if TYPE_CHECKING:
    from registry.manifest import Manifest
    from serve.discovery import NodeInfo

UNMEASURED_MS = 1.0
"""ms per token-layer assumed for a node that has not measured itself."""


def layer_throughput(nodes: Iterable[NodeInfo], num_layers: int) -> list[float]:
    """Tokens/s each layer of the model can serve now, summed over the nodes that hold it."""
    per_layer = [0.0] * num_layers
    for node in nodes:
        if node.status == "evicted" or not 0 <= node.start < node.end <= num_layers:
            continue
        ms = max(node.ms_per_token_layer, UNMEASURED_MS)  # a claimed speed never counts more
        rate = 1000.0 / (ms * (node.end - node.start))
        for layer in range(node.start, node.end):
            per_layer[layer] += rate
    return per_layer


def choose_span(nodes: Iterable[NodeInfo], num_layers: int, length: int) -> tuple[int, int]:
    """(start, end) of the `length` layers where a new node raises the weakest layer most."""
    if not 1 <= length <= num_layers:
        raise ServeError(f"a span of {length} layers does not fit a model of {num_layers}")
    throughput = layer_throughput(nodes, num_layers)
    start = min(range(num_layers - length + 1),
                key=lambda s: (sorted(throughput[s:s + length]), s))
    return start, start + length


def layer_bytes(manifest: Manifest) -> list[int]:
    """Bytes of each decoder layer's tensors."""
    from registry.manifest import layer_of

    sizes = [0] * manifest.num_layers
    for name, tensor in manifest.tensors.items():
        layer = layer_of(name)
        if layer is not None and 0 <= layer < manifest.num_layers:
            sizes[layer] += tensor.nbytes
    return sizes


def layers_that_fit(manifest: Manifest, budget_bytes: int) -> int:
    """How many layers' weights fit in `budget_bytes` (layers of a model are alike in size);
    raises `ServeError` when not even one does."""
    largest = max(layer_bytes(manifest))
    fit = min(manifest.num_layers, budget_bytes // max(1, largest))
    if fit < 1:
        raise ServeError(f"one layer needs {largest / 2**20:.1f} MiB of weights, more than the "
                         f"budget of {budget_bytes / 2**20:.1f} MiB")
    return int(fit)
