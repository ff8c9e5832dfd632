"""Fixtures shared by every test package: tiny models, a signed temp registry, the default model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama in HF format (4 layers, untied head), seeded."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(directory)
    return directory


@dataclass
class TempRegistry:
    """A registry on a temp directory with one key per role, plus spare keys for attacks."""

    path: Path
    store: object
    keys: dict = field(default_factory=dict)
    state_counter: int = 0

    def client(self, state: Path | None = None):
        from registry.client import RegistryClient

        self.state_counter += 1
        return RegistryClient(self.store, state or self.path.parent / f"state-{self.state_counter}")


def make_registry(root: Path, url: str | None = None, thresholds: dict | None = None) -> TempRegistry:
    from registry.publish import init_registry, make_policy
    from registry.signing import SigningKey
    from registry.storage import Store

    thresholds = thresholds or {}
    keys = {name: SigningKey.generate(name) for name in (
        "root", "root2", "release", "release2", "promote", "promote2", "outsider")}
    policy = make_policy(version=1, registry="test-registry", roles={
        "root": ([keys["root"], keys["root2"]], thresholds.get("root", 1)),
        "release": ([keys["release"], keys["release2"]], thresholds.get("release", 1)),
        "promote": ([keys["promote"], keys["promote2"]], thresholds.get("promote", 1))})
    store_path = root / "registry"
    store_path.mkdir(parents=True, exist_ok=True)
    store = Store(url or str(store_path))
    init_registry(store, policy, [keys["root"]],
                  [keys["promote"], keys["promote2"]][:thresholds.get("promote", 1)])
    return TempRegistry(path=store_path, store=store, keys=keys)


@pytest.fixture
def registry(tmp_path) -> TempRegistry:
    return make_registry(tmp_path)


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory, tiny_model_dir):
    """A session registry holding the tiny model, signed by `release` (do not mutate)."""
    from registry.publish import import_model

    reg = make_registry(tmp_path_factory.mktemp("tiny-registry"))
    result = import_model(reg.store, tiny_model_dir, name="tiny",
                          release_keys=[reg.keys["release"]])
    return reg, result.version_id


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from registry.importer import default_gguf as find

    return find()


@pytest.fixture(scope="session")
def imported_default(tmp_path_factory, default_gguf):
    """The default model imported and signed into a session registry; (registry, version, dir)."""
    from registry.publish import import_model

    reg = make_registry(tmp_path_factory.mktemp("default-registry"))
    result = import_model(reg.store, default_gguf, name="smollm2-135m-instruct",
                          release_keys=[reg.keys["release"]])
    checkout = tmp_path_factory.mktemp("default-checkout")
    reg.client().checkout(result.version_id, checkout)
    return reg, result.version_id, checkout


@pytest.fixture(scope="session")
def prefect_harness():
    """Flows run under Prefect's test harness (a temporary API server for the whole session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@dataclass
class TraceGateway:
    """A swarm whose gateway has a trace store, shared by the modules that only add accounts,
    traces and grants of their own to it (each module names its own accounts)."""

    swarm: object
    """serve.up.LocalSwarm: `base_url`, `tracker_url`."""
    store: object
    """traces.store.TraceStore on the gateway's tables (a second process's view of them)."""
    keys: dict = field(default_factory=dict)
    """Account name -> (account id, secret key)."""

    def account(self, name: str, role: str) -> tuple[str, str]:
        """(account id, key) of the account `name`, created with `role` on first use."""
        if name not in self.keys:
            account = self.store.create_account(role, name)
            self.keys[name] = (account.account_id, self.store.create_key(account.account_id)[1])
        return self.keys[name]


@pytest.fixture(scope="session")
def trace_gateway(tmp_path_factory, tiny_model_dir):
    """Two nodes splitting the tiny model's 4 layers, tracker and a gateway with a trace store,
    verification off (a module testing what the store and its views do, not the checks)."""
    from serve.up import LocalSwarm, SwarmSpec
    from tests.serve.conftest import tiny_home
    from traces.store import TraceStore, TraceStoreConfig

    home = tiny_home(tmp_path_factory, tiny_model_dir)
    swarm = LocalSwarm(SwarmSpec(model="tiny@production", nodes=2, traces=True, verify=False),
                       home, num_layers=4)
    store = TraceStore(TraceStoreConfig(uri=str(home / "traces" / "lancedb"),
                                        log_dir=home / "traces" / "log-test-unused"))
    swarm.start()
    yield TraceGateway(swarm, store)
    swarm.stop()
