"""Automatic span choice (`serve.placement`): a new node takes the layers the swarm serves
worst, weighing each node by its measured speed and ignoring evicted ones."""

from __future__ import annotations

import pytest

from serve.discovery import NodeInfo
from serve.exceptions import ServeError
from serve.placement import choose_span, layer_throughput, layers_that_fit


def node(start: int, end: int, ms: float = 1.0, status: str = "ok") -> NodeInfo:
    return NodeInfo(node_id=f"n{start}-{end}-{ms}-{status}", url="ws://127.0.0.1:1",
                    start=start, end=end, version="sha256:v", public_key="00",
                    ms_per_token_layer=ms, status=status)


def test_an_empty_swarm_is_filled_from_the_first_layer():
    assert choose_span([], 8, 3) == (0, 3)


def test_the_uncovered_layers_are_taken_first():
    swarm = [node(0, 2), node(0, 2), node(4, 8)]
    assert choose_span(swarm, 8, 2) == (2, 4)
    # 3 layers: both holes, and the third on 4:8's single node rather than 0:2's two
    assert choose_span(swarm, 8, 3) == (2, 5)


def test_a_replica_goes_where_throughput_is_weakest():
    # 0:2 is held by one slow node, 2:4 by a fast one: the new node doubles up on 0:2
    assert choose_span([node(0, 2, ms=10.0), node(2, 4, ms=1.0)], 4, 2) == (0, 2)
    assert choose_span([node(0, 2, ms=1.0), node(2, 4, ms=10.0)], 4, 2) == (2, 4)
    # the same nodes, but the slow one evicted: its layers count as uncovered
    assert choose_span([node(0, 2, ms=1.0, status="evicted"), node(2, 4, ms=10.0)], 4, 2) == (0, 2)


def test_throughput_per_layer_divides_a_node_over_its_span():
    assert layer_throughput([node(0, 4, ms=2.0), node(2, 4, ms=1.0)], 4) == [125, 125, 625, 625]
    # a record claiming layers beyond the model is not counted
    assert layer_throughput([node(0, 9)], 4) == [0, 0, 0, 0]


def test_a_span_longer_than_the_model_is_refused():
    with pytest.raises(ServeError):
        choose_span([], 4, 5)


def test_layers_that_fit_reads_the_manifest(tiny_home_registry):
    client, manifest = tiny_home_registry
    per_layer = max(sum(t.nbytes for n, t in manifest.tensors.items()
                        if n.startswith(f"model.layers.{i}.")) for i in range(manifest.num_layers))
    assert layers_that_fit(manifest, 10**12) == manifest.num_layers
    assert layers_that_fit(manifest, 2 * per_layer) == 2
    with pytest.raises(ServeError, match="MiB"):
        layers_that_fit(manifest, per_layer - 1)


@pytest.fixture
def tiny_home_registry(tmp_path_factory, tiny_model_dir):
    from flows.config import ShoalConfig
    from tests.serve.conftest import tiny_home

    home = tiny_home(tmp_path_factory, tiny_model_dir)
    client = ShoalConfig(home=home, registry_url=str(home / "registry")).client()
    return client, client.manifest(client.resolve("tiny@production"))
