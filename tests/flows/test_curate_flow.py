"""The `curate` flow end to end on a real LanceDB trace store, under Prefect's test harness:
planted secrets and PII gone from every output file, duplicates and contaminated items gone, the
card's counts equal to what was planted, scopes respected, erasure followed by a re-run leaves
none of the contributor's text in any dataset file, and a Dask cluster of separate worker processes
builds the same datasets as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curate import synthetic
from curate.card import load_card, load_split
from curate.catalog import latest
from curate.config import CurateConfig
from flows.config import ShoalConfig
from serve.up import free_port
from traces.schemas import Account, FeedbackIn, Trace
from traces.store import TraceStore, TraceStoreConfig

EVAL = ["Please call the weather tool for the city of Lyon and give the temperature in celsius "
        "as one number only",
        "Convert twenty three Australian dollars to Norwegian krone using the currency tool now",
        "Start a fifty six minute timer called stretch and tell me when it is done please"]
SCOPES = {"alice": ["sft", "dpo", "distill", "eval"], "bob": ["sft"],
          "carol": ["sft", "dpo", "distill"]}


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SHOAL_REGISTRY", raising=False)
    return tmp_path / "home"


def _fill(store: TraceStore, corpus) -> dict[str, Account]:
    people = {}
    for name, scopes in SCOPES.items():
        people[name] = store.create_account("contributor", name)
        grant = store.create_grant(people[name], scopes, days=30)
        people[name + "/grant"] = grant
    rename = {}
    for row in corpus.traces:
        who = row["contributor_id"]
        grant = people[who + "/grant"]
        trace = Trace(**{**row, "contributor_id": people[who].account_id,
                         "grant_id": grant.grant_id, "grant_scopes": grant.scopes,
                         "grant_expires_at": grant.expires_at})
        store.record(trace)
        rename[row["request_id"]] = who
    store.flush()
    for f in corpus.feedback:
        who = rename[f["request_id"]]
        store.add_feedback(people[who], FeedbackIn(
            request_id=f["request_id"], rating=f["rating"], correction=f["correction"] or None))
    return people


def _versions_trained_on(shoal: ShoalConfig, model_dir, dataset_id: str) -> tuple[str, str]:
    """A registry holding the genesis version and one whose lineage says it was trained on
    `dataset_id`; returns (trained, genesis)."""
    from flows.genesis import ensure_keys, ensure_registry
    from registry.manifest import Lineage
    from registry.publish import import_model
    from tests.helpers import make_tiny_llama

    keys = ensure_keys(shoal)
    ensure_registry(shoal, keys)
    genesis = import_model(shoal.store(), model_dir, name="tiny",
                           release_keys=[keys["release"]]).version_id
    make_tiny_llama(shoal.home / "trained", seed=8)
    lineage = Lineage(parent=genesis, training={"dataset_ids": [dataset_id]})
    trained = import_model(shoal.store(), shoal.home / "trained", name="tiny", lineage=lineage,
                           release_keys=[keys["release"]]).version_id
    return trained, genesis


@pytest.mark.slow
def test_curate_flow_cleans_documents_and_honours_erasure(home, prefect_harness, tiny_model_dir):
    from flows.curation import run_curate

    shoal = ShoalConfig.from_env()
    corpus = synthetic.corpus(120, seed=11, eval_texts=EVAL)
    store = TraceStore(TraceStoreConfig(uri=str(home / "traces" / "lancedb"),
                                        log_dir=home / "traces" / "log", embed=False))
    people = _fill(store, corpus)

    result = run_curate(shoal, eval_texts=EVAL)
    files = _all_bytes(shoal.datasets_dir)
    assert files  # datasets were written
    leaked = [k for k, v in corpus.planted["secrets"].items() if v.encode() in files]
    assert leaked == []

    ids = latest(shoal.datasets_dir)
    assert set(ids) == {"sft", "dpo", "distill"}
    sft_dir = shoal.datasets_dir / ids["sft"]
    card = load_card(sft_dir)
    counts = card.counts
    assert counts["dedup"]["exact"]["dropped"] == len(corpus.planted["exact_dups"])
    assert counts["dedup"]["near"]["dropped"] == len(corpus.planted["near_dups"])
    assert counts["decontamination"]["dropped"] == len(corpus.planted["contaminated"])
    assert all(counts["quality"]["dropped"][name] == 1 for name in corpus.planted["low_quality"])
    assert counts["traces"] == len(corpus.traces)
    assert card.flow_run_id == result["flow_run_id"] and card.trace_ids["count"] > 0
    assert card.source["version"] > 0 and card.config_digest
    assert "names" in card.scrubber

    sft_rows = load_split(sft_dir, "train") + load_split(sft_dir, "eval")
    kept = {r["request_id"] for r in sft_rows}
    for original, copy in corpus.planted["exact_dups"] + corpus.planted["near_dups"]:
        assert not {original, copy} <= kept
    assert not kept & set(corpus.planted["contaminated"])
    dpo_dir = shoal.datasets_dir / ids["dpo"]
    dpo_rows = load_split(dpo_dir, "train") + load_split(dpo_dir, "eval")
    owners = {r["request_id"]: r["contributor_id"] for r in corpus.traces}
    assert dpo_rows and {owners[r["request_id"]] for r in dpo_rows} <= {"alice", "carol"}

    # erasure marks the datasets that used alice's traces; the next run rebuilds without her
    alice_text = [r["completion"] for r in corpus.traces
                  if r["contributor_id"] == "alice" and len(r["completion"]) > 40]
    assert any(t.encode() in files for t in alice_text)
    trained, untouched = _versions_trained_on(shoal, tiny_model_dir, ids["sft"])
    receipt = store.erase_contributor(people["alice"].account_id)
    assert set(receipt["datasets_marked_for_rebuild"]) == set(ids.values())
    again = run_curate(shoal, eval_texts=EVAL)
    assert set(again["rebuilt_from"]) == set(ids.values())
    # the version trained on the erased rows is flagged in the registry, not retracted
    assert again["flagged_versions"] == [trained]
    from typer.testing import CliRunner

    from flows.cli import app

    shown = CliRunner().invoke(app, ["model", "show", trained[:19]])
    assert shown.exit_code == 0 and "FLAGGED: trained on rows erased since" in shown.output
    assert ids["sft"] in shown.output
    assert "FLAGGED" not in CliRunner().invoke(app, ["model", "show", untouched[:19]]).output
    files = _all_bytes(shoal.datasets_dir) + _all_bytes(shoal.cache_dir)
    assert not [t for t in alice_text if t.encode() in files]
    assert store.datasets_marked_for_rebuild() == []
    new_ids = latest(shoal.datasets_dir)
    assert all((shoal.datasets_dir / d / "card.json").exists() for d in new_ids.values())
    assert not any((shoal.datasets_dir / d).exists() for d in ids.values())


@pytest.mark.slow
def test_curate_flow_is_cached_by_input_hash(home, prefect_harness):
    from flows.curation import run_curate

    shoal = ShoalConfig.from_env()
    store = TraceStore(TraceStoreConfig(uri=str(home / "traces" / "lancedb"),
                                        log_dir=home / "traces" / "log", embed=False))
    _fill(store, synthetic.corpus(20, seed=3))
    config = CurateConfig(chunk_size=10)
    first = run_curate(shoal, config, eval_texts=EVAL)
    cached = sorted((shoal.cache_dir / "curate").rglob("*"))
    second = run_curate(shoal, config, eval_texts=EVAL)
    assert first["chunks"] == len(cached) >= 4 and first["chunks_cached"] == 0
    assert second["chunks_cached"] == second["chunks"] == first["chunks"]
    assert first["datasets"] == second["datasets"]
    assert sorted((shoal.cache_dir / "curate").rglob("*")) == cached  # nothing new written


@pytest.fixture
def dask_cluster(tmp_path):
    """A Dask scheduler and two single-threaded workers as separate processes (what other machines
    would run), on loopback; yields the scheduler address."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    bin_dir = Path(sys.executable).parent
    logs = [open(tmp_path / f"dask-{name}.log", "wb") for name in ("scheduler", "workers")]
    procs = [subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port",
                               address.rsplit(":", 1)[1], "--no-dashboard"],
                              stdout=logs[0], stderr=subprocess.STDOUT)]
    procs.append(subprocess.Popen([bin_dir / "dask", "worker", address, "--nworkers", "2",
                                   "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                  stdout=logs[1], stderr=subprocess.STDOUT))
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


@pytest.mark.slow
def test_curate_flow_on_a_dask_cluster_builds_the_same_datasets(home, prefect_harness,
                                                                 dask_cluster):
    from distributed import Client

    from flows.curation import run_curate

    shoal = ShoalConfig.from_env()
    store = TraceStore(TraceStoreConfig(uri=str(home / "traces" / "lancedb"),
                                        log_dir=home / "traces" / "log", embed=False))
    corpus = synthetic.corpus(40, seed=5, eval_texts=EVAL)
    _fill(store, corpus)
    config = CurateConfig(chunk_size=10)
    on_dask = run_curate(shoal, config, dask_address=dask_cluster, eval_texts=EVAL)
    with Client(dask_cluster) as client:
        ran = client.run_on_scheduler(lambda dask_scheduler: {
            name: p.state_counts["memory"] for name, p in dask_scheduler.task_prefixes.items()})
    assert ran.get("scrub_chunk") == on_dask["chunks"] >= 4  # every chunk was computed there
    files = _all_bytes(shoal.datasets_dir)
    assert not [k for k, v in corpus.planted["secrets"].items() if v.encode() in files]

    # the same traces on this process alone, cache cleared: identical datasets
    shutil.rmtree(shoal.cache_dir / "curate")
    local = run_curate(shoal, config, eval_texts=EVAL)
    assert local["chunks_cached"] == 0
    assert local["datasets"] == on_dask["datasets"]


@pytest.mark.slow
def test_curate_served_as_a_scheduled_deployment(home, prefect_harness, tmp_path):
    """`shoal flow curate --cron …` against a Prefect server registers the deployment with its
    schedule; a run of it builds the datasets and caches chunks only under `$SHOAL_HOME/cache`."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    shoal = ShoalConfig.from_env()
    store = TraceStore(TraceStoreConfig(uri=str(home / "traces" / "lancedb"),
                                        log_dir=home / "traces" / "log", embed=False))
    _fill(store, synthetic.corpus(20, seed=7, eval_texts=EVAL))
    # no gateway runs here: give the log up, so the flow's process embeds what it reads itself
    # (while this process owned it, the flow waited `embed_wait_s` for an owner that never embeds)
    store.log.release()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "flow", "curate", "--cron",
                             "0 3 * * *"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        deployment = None
        with get_client(sync_client=True) as client:
            while deployment is None:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "deployment never appeared"
                try:
                    deployment = client.read_deployment_by_name("curate/shoal")
                except ObjectNotFound:
                    time.sleep(1)
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        assert deployment.parameters["home"] == str(shoal.home)

        run = run_deployment("curate/shoal", timeout=240)
        assert run.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
        assert set(latest(shoal.datasets_dir)) == {"sft", "dpo", "distill"}
        assert list((shoal.cache_dir / "curate").iterdir())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
