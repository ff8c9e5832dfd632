"""docs/traces.md's contributor examples, run as they stand against a real gateway with a trace
store on 127.0.0.1: the openai SDK block, the curl block and the maintainer's curl block. Each
must exit 0 (the SDK raises on any 4xx, curl -f fails on one) and leave the store as it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
DOC = Path(__file__).parents[2] / "docs" / "traces.md"


def block(name: str) -> str:
    found = re.search(rf"<!-- {name} -->\n```\w+\n(.*?)```\n<!-- /{name} -->", DOC.read_text(),
                      re.S)
    assert found, f"docs/traces.md has no {name} block"
    return found.group(1)


@pytest.fixture(scope="module")
def gateway(trace_gateway):
    for name, role in [("sdk", "contributor"), ("curl", "contributor"), ("held", "contributor"),
                       ("admin", "maintainer")]:
        trace_gateway.account(name, role)
    return trace_gateway.swarm, trace_gateway.store, trace_gateway.keys


def run(gateway, who: str, argv: list[str], **env) -> str:
    swarm, _, keys = gateway
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={
        **os.environ, "OPENAI_BASE_URL": f"{swarm.base_url}/v1", "OPENAI_API_KEY": keys[who][1],
        **env})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_the_sdk_example_runs_and_leaves_nothing_behind(gateway):
    _, store, keys = gateway
    out = run(gateway, "sdk", [sys.executable, "-c", block("contributor-sdk")])
    kept = re.search(r"kept: (.*)", out).group(1)
    assert "'run-42'" in kept and kept.count("(") == 1  # store=False was not kept
    assert "deleted: {'traces': 1" in out
    assert store.query(contributor_id=keys["sdk"][0]) == [] and store.grants(keys["sdk"][0]) == []


def test_the_curl_example_runs_and_leaves_nothing_behind(gateway):
    _, store, keys = gateway
    out = run(gateway, "curl", ["bash", "-euo", "pipefail", "-c", block("contributor-curl")])
    assert '"object":"erasure_receipt"' in out.replace(" ", "")
    assert store.query(contributor_id=keys["curl"][0]) == [] and store.grants(keys["curl"][0]) == []


def test_the_maintainer_example_reads_and_erases_a_contributor(gateway):
    import httpx

    swarm, store, keys = gateway
    who, secret = keys["held"]
    store.create_grant(store.account(who), ["sft"], days=1)
    reply = httpx.post(f"{swarm.base_url}/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {secret}"},
                       json={"model": "tiny", "max_tokens": 3,
                             "messages": [{"role": "user", "content": "hi"}]}).json()
    request_id = reply["shoal"]["request_id"]
    assert request_id and reply["shoal"]["trace_id"] == request_id  # the older name, same id
    httpx.post(f"{swarm.base_url}/v1/feedback", timeout=30, headers={
        "Authorization": f"Bearer {secret}"}, json={"trace_id": request_id, "rating": 5}
    ).raise_for_status()
    out = run(gateway, "admin", ["bash", "-euo", "pipefail", "-c", block("maintainer-curl")],
              SHOAL_MAINTAINER_KEY=keys["admin"][1], CONTRIBUTOR=who)
    assert out.count(request_id) >= 2  # listed (rating 5 ≥ 4) and exported
    assert store.query(contributor_id=who) == []


def test_traces_delete_and_grants_revoke_from_the_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.config import ShoalConfig
    from tests.traces.test_store import make_trace
    from traces.exceptions import NotFound

    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    store = ShoalConfig.from_env().trace_store()
    account = store.create_account("contributor", "cli")
    grant = store.create_grant(account, ["sft"], days=1)
    trace = make_trace(account, grant)
    store.record(trace)
    store.flush()
    cli = CliRunner()
    deleted = cli.invoke(app, ["traces", "delete", trace.request_id], catch_exceptions=False)
    assert deleted.exit_code == 0 and '"traces": 1' in deleted.output, deleted.output
    with pytest.raises(NotFound):
        store.get(trace.request_id)
    revoked = cli.invoke(app, ["grants", "revoke", grant.grant_id, "--contributor",
                               account.account_id], catch_exceptions=False)
    assert revoked.exit_code == 0, revoked.output
    listed = cli.invoke(app, ["grants", "list", "--contributor", account.account_id])
    assert grant.grant_id in listed.output and "revoked" in listed.output
    missing = cli.invoke(app, ["traces", "delete", trace.request_id])
    assert missing.exit_code == 1 and missing.output.startswith("error: no trace")
