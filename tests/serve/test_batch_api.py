"""The Batch API through the official `openai` SDK against a real swarm: lifecycle, per-line errors,
ownership, cancel, a gateway killed with -9 mid-batch, and metering that adds up to the served
responses' `usage`."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import openai
import pytest

from serve.up import LocalSwarm, SwarmSpec
from tests.serve.conftest import tiny_home

pytestmark = pytest.mark.slow
KEYS = ("sk-alice", "sk-bob", "sk-carol")


@pytest.fixture(scope="module")
def swarm(tmp_path_factory, tiny_model_dir):
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    # no live-weight proofs: they are tested elsewhere, and a gateway restarts faster without
    swarm = LocalSwarm(SwarmSpec(model="tiny@production", nodes=1, api_keys=list(KEYS),
                                 verify=False), home, num_layers=4).start()
    yield swarm
    swarm.stop()


def client(swarm, key: str = KEYS[0]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{swarm.base_url}/v1", api_key=key, max_retries=0,
                         timeout=60)


def chat_line(custom_id: str, text: str, max_tokens: int = 4) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": [{"role": "user", "content": text}],
                     "max_tokens": max_tokens, "temperature": 0}}


def jsonl(lines: list) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode() + b"\n"


def start(c: openai.OpenAI, lines: list):
    f = c.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                            completion_window="24h")


def wait(c: openai.OpenAI, batch_id: str, until=lambda b: b.status in (
        "completed", "failed", "cancelled", "expired"), timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        b = c.batches.retrieve(batch_id)
        if until(b):
            return b
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {b.status} {b.request_counts}")


def lines_of(c: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in c.files.content(file_id).text.splitlines()]


@pytest.fixture(scope="module")
def finished(swarm):
    """A completed batch of good and bad lines, with its output and error files."""
    c = client(swarm)
    good = [chat_line(f"q{i}", f"count to {i}") for i in range(4)]
    bad_body = chat_line("hot", "hi")
    bad_body["body"]["temperature"] = -1
    lines = [good[0], "{not json", good[1], bad_body, {**good[2], "custom_id": "q0"}, good[3],
             {**chat_line("wrong-url", "hi"), "url": "/v1/completions"}]
    b = wait(c, start(c, lines).id)
    return b, lines_of(c, b.output_file_id), lines_of(c, b.error_file_id)


def test_lifecycle_and_per_line_errors(swarm, finished):
    b, out, errors = finished
    assert b.status == "completed" and b.completion_window == "24h"
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == \
        (7, 3, 4)
    assert b.in_progress_at and b.finalizing_at and b.completed_at >= b.created_at
    assert sorted(x["custom_id"] for x in out) == ["q0", "q1", "q3"]
    codes = {e["custom_id"]: e["error"]["code"] for e in errors}
    assert codes == {"line-2": "invalid_json", "hot": "invalid_request",
                     "q0": "duplicate_custom_id", "wrong-url": "mismatched_endpoint"}
    assert "temperature" in next(e for e in errors if e["custom_id"] == "hot")["error"]["message"]
    # a batch line is the same request as an interactive one: same greedy text, same usage
    q1 = next(x for x in out if x["custom_id"] == "q1")["response"]
    assert q1["status_code"] == 200
    body = chat_line("q1", "count to 1")["body"]
    live = client(swarm, KEYS[2]).chat.completions.create(**body)
    assert q1["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content
    assert q1["body"]["usage"]["prompt_tokens"] == live.usage.prompt_tokens
    listed = client(swarm).batches.list(limit=5)
    assert b.id in [x.id for x in listed.data]
    c = client(swarm)
    assert {b.input_file_id, b.output_file_id} <= {f.id for f in c.files.list()}
    assert c.files.delete(b.error_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(b.error_file_id)


def test_another_key_gets_404(swarm, finished):
    b, _, _ = finished
    other = client(swarm, KEYS[1])
    for call in (lambda: other.batches.retrieve(b.id), lambda: other.batches.cancel(b.id),
                 lambda: other.files.retrieve(b.output_file_id),
                 lambda: other.files.delete(b.input_file_id),
                 lambda: other.files.content(b.input_file_id),
                 lambda: other.batches.create(input_file_id=b.input_file_id,
                                              endpoint="/v1/chat/completions",
                                              completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.id not in [x.id for x in other.batches.list().data]
    assert b.input_file_id not in [f.id for f in other.files.list()]


def test_bad_uploads_are_refused(swarm):
    c = client(swarm)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        c.files.create(file=("in.jsonl", b"{}\n"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="UTF-8"):
        c.files.create(file=("in.jsonl", b"\xff\xfe\n"), purpose="batch")
    f = c.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                         completion_window="24h")


def test_an_input_file_may_exceed_the_request_body_bound(swarm):
    """Input files are bounded by the upload limit, not by the 2 MiB that bounds a prompt; the
    same bytes as a chat request body are still refused."""
    c = client(swarm)
    line = chat_line("big", "x" * 1000)
    big = jsonl([{**line, "custom_id": f"big{i}"} for i in range(3000)])
    assert len(big) > 3 * 2**20
    f = c.files.create(file=("big.jsonl", big), purpose="batch")
    assert c.files.retrieve(f.id).bytes == len(big)
    assert c.files.content(f.id).content == big
    r = httpx.post(f"{swarm.base_url}/v1/chat/completions", content=big, timeout=60,
                   headers={"Authorization": f"Bearer {KEYS[0]}",
                            "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    c.files.delete(f.id)


def test_an_owners_stored_files_are_bounded(tmp_path):
    from serve.exceptions import StorageFull
    from serve.gateway.batches import BatchStore
    from serve.gateway.statedb import StateDB

    store = BatchStore(StateDB(tmp_path / "state.db"))
    first = store.add_file("alice", "batch", "a.jsonl", b"x" * 600, max_owner_bytes=1000)
    with pytest.raises(StorageFull, match="600 bytes"):
        store.add_file("alice", "batch", "b.jsonl", b"x" * 600, max_owner_bytes=1000)
    store.add_file("bob", "batch", "b.jsonl", b"x" * 600, max_owner_bytes=1000)  # bob's own room
    assert store.delete_file("alice", first["id"])
    store.add_file("alice", "batch", "b.jsonl", b"x" * 600, max_owner_bytes=1000)


def test_cancel_stops_new_lines(swarm):
    c = client(swarm)
    b = start(c, [chat_line(f"c{i}", f"story {i}", max_tokens=24) for i in range(40)])
    b = c.batches.cancel(b.id)
    assert b.status in ("cancelling", "cancelled")
    b = wait(c, b.id)
    assert b.status == "cancelled" and b.cancelled_at
    out, errors = lines_of(c, b.output_file_id), lines_of(c, b.error_file_id)
    assert len(out) + len(errors) == 40 and len(out) < 40
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_interactive_requests_run_beside_a_batch(swarm):
    """Lines held for interactive traffic go on when it ends; both finish."""
    c = client(swarm, KEYS[2])
    b = start(c, [chat_line(f"i{i}", f"tell {i}", max_tokens=12) for i in range(30)])
    wait(c, b.id, until=lambda x: x.request_counts.completed >= 1)
    for i in range(3):
        assert c.chat.completions.create(**chat_line("x", f"quick {i}", 4)["body"]).usage
    b = wait(c, b.id)
    assert b.status == "completed" and b.request_counts.completed == 30


def test_gateway_killed_mid_batch_loses_and_doubles_nothing(swarm):
    c = client(swarm, KEYS[1])
    n = 24
    b = start(c, [chat_line(f"k{i}", f"say {i} twice", max_tokens=16) for i in range(n)])
    wait(c, b.id, until=lambda x: x.request_counts.completed >= 3)
    swarm.kill("gateway")
    with sqlite3.connect(swarm.home / "gateway" / "gateway.db") as db:  # what the crash left
        done, = db.execute("SELECT COUNT(*) FROM lines WHERE batch_id = ? AND state = 'ok'",
                           (b.id,)).fetchone()
    assert 3 <= done < n
    swarm.restart("gateway")
    b = wait(c, b.id)
    assert b.status == "completed" and b.request_counts.completed == n
    out = lines_of(c, b.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"k{i}" for i in range(n))
    assert not lines_of(c, b.error_file_id)
    assert usage(swarm, KEYS[1])["batch_lines"] == n  # lines re-run after the crash count once


def test_usage_adds_up_to_the_served_responses(swarm):
    key = "sk-carol"
    c = client(swarm, key)
    before = usage(swarm, key)
    served = [c.chat.completions.create(**chat_line("x", "hello there", 6)["body"]).usage,
              c.completions.create(model="tiny", prompt="once upon", max_tokens=5,
                                   temperature=0).usage]
    stream = c.chat.completions.create(**chat_line("x", "stream me", 5)["body"], stream=True,
                                       stream_options={"include_usage": True})
    served.append([chunk.usage for chunk in stream if chunk.usage][0])
    b = wait(c, start(c, [chat_line(f"u{i}", f"word {i}", 3) for i in range(3)]).id)
    lines = [x["response"]["body"]["usage"] for x in lines_of(c, b.output_file_id)]
    after = usage(swarm, key)
    assert after["requests"] - before["requests"] == 3
    assert after["batch_lines"] - before["batch_lines"] == 3
    for field in ("prompt_tokens", "completion_tokens"):
        want = sum(getattr(u, field) for u in served) + sum(u[field] for u in lines)
        assert after[field] - before[field] == want
    from typer.testing import CliRunner

    from flows.cli import app

    export = CliRunner().invoke(app, ["usage", "--gateway", swarm.base_url, "--api-key", key,
                                      "--format", "csv"], catch_exceptions=False)
    header, row = export.output.splitlines()
    assert header.startswith("kind,id,requests") and row.split(",")[2:4] == [
        str(after["requests"]), str(after["batch_lines"])]
    assert "nodes" not in httpx.get(f"{swarm.base_url}/v1/usage", headers={
        "Authorization": f"Bearer {key}"}, timeout=10).json()  # node usage: maintainers only


def usage(swarm, key: str) -> dict:
    r = httpx.get(f"{swarm.base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"},
                  timeout=10)
    assert r.status_code == 200, r.text
    rows = r.json()["keys"]
    assert len(rows) <= 1
    return rows[0] if rows else {"requests": 0, "batch_lines": 0, "prompt_tokens": 0,
                                 "completion_tokens": 0}
