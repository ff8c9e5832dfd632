"""Each curation stage on the planted corpus: what was planted is found, nothing else is lost."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from curate import builders, dedup, filters
from curate.card import load_card, load_split, write_dataset
from curate.config import CurateConfig, DedupConfig, FilterConfig, SplitConfig
from curate.decontam import EvalIndex, decontaminate
from curate.records import Record
from curate.scrub import SECRET_ENTITIES, Scrubber, _windows
from tests.curate.conftest import EVAL


def _dump(records) -> str:
    return json.dumps([r.__dict__ for r in records], default=str)


def test_scrub_removes_every_planted_value_and_counts_every_kind(records, planted, scrubber):
    before = _dump(records)
    assert all(v in before for v in planted.planted["secrets"].values())
    out, stats = scrubber.scrub(records)
    after = _dump(out)
    leaked = {k: v for k, v in planted.planted["secrets"].items() if v in after}
    assert leaked == {}
    # each kind was planted three times: in a prompt, an answer and a tool-call argument
    for kind in ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS",
                 "URL_CREDENTIALS", "API_KEY", "GITHUB_TOKEN", "JWT", "PRIVATE_KEY", "PASSWORD"):
        assert stats["replaced"].get(kind, 0) >= 3, (kind, stats["replaced"])
    assert stats["replaced"]["AWS_KEY"] >= 6  # access key ids and secret keys
    # clean records come out untouched
    clean = records[:120]
    assert [r.completion for r in scrubber.scrub(clean)[0]] == [r.completion for r in clean]


def test_windowed_analysis_finds_what_whole_text_analysis_finds(records, scrubber):
    checked = 0
    for r in records:
        text = r.text()
        whole = {(x.entity_type, x.start, x.end) for x in scrubber.analyzer.analyze(
            text, language="en", entities=scrubber.pii_entities,
            score_threshold=scrubber.config.score_threshold)}
        windowed = {(x.entity_type, x.start, x.end) for x in scrubber.find(text)
                    if x.entity_type not in SECRET_ENTITIES}
        assert windowed == whole, r.request_id
        checked += bool(whole)
    assert checked >= 15  # the comparison covered texts that do contain PII


def test_windows_cover_triggers_and_never_cut_words():
    text = "x " * 300 + "mail bob@example.org now " + "y " * 300
    spans = _windows(text)
    assert len(spans) == 1
    start, end = spans[0]
    assert text[start:end].count("bob@example.org") == 1
    assert start == 0 or text[start - 1].isspace()
    assert _windows("no triggers in this sentence at all") == []


def test_scrubber_without_ner_says_so():
    caps = Scrubber().capabilities()
    assert "person, place and organisation names" in caps["not_detected"] or "PERSON" in caps["pii"]
    assert set(SECRET_ENTITIES) <= set(caps["secrets"])


def test_exact_and_near_dedup_drop_exactly_the_planted_copies(records, planted):
    cfg = DedupConfig()
    kept, stats = dedup.exact(records)
    assert stats["dropped"] == len(planted.planted["exact_dups"])
    sigs = dedup.signatures(kept, cfg)
    kept, stats = dedup.near(kept, sigs, cfg)
    assert stats["dropped"] == len(planted.planted["near_dups"])
    ids = {r.request_id for r in kept}
    for original, copy in planted.planted["exact_dups"] + planted.planted["near_dups"]:
        assert original in ids and copy not in ids


def test_minhash_is_stable_across_calls_and_sensitive_to_content(records):
    cfg = DedupConfig()
    a = dedup.signatures(records[:5], cfg)
    b = dedup.signatures(records[:5], cfg)
    assert (a == b).all()
    assert (a[0] != a[1]).mean() > 0.9


def test_semantic_dedup_uses_real_embeddings():
    from traces.embedders import load

    embed = load("minilm").embed
    texts = ["How do I reset my password on the website?",
             "How can I reset the password for my account on the website?",
             "What is the boiling point of water at sea level?"]
    vectors = embed(texts)
    base = Record("r0", "t0", "c", ("sft",), "v", ({"role": "user", "content": ""},), "")
    records = [replace(base, request_id=f"r{i}", completion=t, vector=tuple(v))
               for i, (t, v) in enumerate(zip(texts, vectors))]
    kept, stats = dedup.semantic(records, DedupConfig(semantic_threshold=0.85))
    assert [r.request_id for r in kept] == ["r0", "r2"] and stats["dropped"] == 1
    kept, _ = dedup.semantic(records, DedupConfig(semantic_threshold=0.999))
    assert len(kept) == 3


def test_each_filter_drops_its_planted_record_and_says_which(records, planted):
    kept, stats = filters.quality(records, FilterConfig())
    kept_ids = {r.request_id for r in kept}
    for name, request_id in planted.planted["low_quality"].items():
        assert request_id not in kept_ids, name
        assert stats["dropped"][name] == 1, (name, stats)
    assert len(kept) == len(records) - len(planted.planted["low_quality"])


def test_decontamination_drops_contaminated_items_only(records, planted):
    kept, stats = decontaminate(records, EvalIndex(EVAL, 13))
    assert stats["dropped"] == len(planted.planted["contaminated"]) == 3
    assert not {r.request_id for r in kept} & set(planted.planted["contaminated"])
    # an item shorter than n is matched whole: word for word inside a record, or (under
    # `min_words`) as a whole turn after normalisation
    short = EvalIndex(["What's the weather in Lisbon in celsius?", "Hi there"], 13)
    assert short.contaminated("so: what's the weather in Lisbon in celsius? thanks")
    assert not short.contaminated("what's the weather in Paris in celsius?")
    assert short.short == 1 and short.items == 2


def test_short_evaluation_items_are_matched_whole_after_normalisation():
    index = EvalIndex(["What is 2 plus 2?", "Name three primary colors."], 13)
    sent = [Record(request_id=f"r{i}", trace_id=f"r{i}", contributor_id="c", scopes=("sft",),
                   model_version="v", messages=({"role": "user", "content": q},),
                   completion="4")
            for i, q in enumerate(["what is 2 plus 2", "  NAME three primary colors!!",
                                   "What is 2 plus 3?", "Name three primary colors you like."])]
    kept, stats = decontaminate(sent, index)
    assert [r.request_id for r in kept] == ["r2", "r3"]
    assert stats["dropped"] == 2 and stats["eval_items_matched_whole"] == 2
    # a correction that repeats an item whole is a leak too
    corrected = [replace(sent[2], corrections=("What is 2 plus 2?",))]
    assert decontaminate(corrected, index)[0] == []


def test_sets_respect_scopes_and_split_by_agent_run(records, planted):
    scopes = {r.contributor_id: set(r.scopes) for r in records}
    by_id = {r.request_id: r for r in records}
    dpo_rows, stats = builders.dpo(records)
    assert dpo_rows and all("dpo" in scopes[by_id[row["request_id"]].contributor_id]
                            for row in dpo_rows)
    assert stats["out_of_scope"] > 0  # bob gave feedback but did not grant dpo
    assert planted.planted["feedback_by"]["bob"] not in {row["request_id"] for row in dpo_rows}
    distill_rows, _ = builders.distill(records)
    assert all("distill" in scopes[by_id[row["request_id"]].contributor_id] for row in distill_rows)
    # several requests of one agent run never straddle the split
    run = [replace(r, trace_id=f"run-{i % 7}") for i, r in enumerate(records)]
    rows, _ = builders.sft(run)
    splits = builders.split(rows, SplitConfig(eval_fraction=0.3, seed=3))
    train_runs = {row["trace_id"] for row in splits["train"]}
    eval_runs = {row["trace_id"] for row in splits["eval"]}
    assert train_runs and eval_runs and not train_runs & eval_runs


def test_corrections_become_sft_answers_and_dpo_pairs(records, planted):
    rid = planted.planted["feedback_by"]["alice"]
    record = next(r for r in records if r.request_id == rid)
    sft_rows, _ = builders.sft([record])
    assert sft_rows[0]["messages"][-1]["content"] == record.corrections[-1]
    dpo_rows, _ = builders.dpo([record])
    assert dpo_rows[0]["chosen"][0]["content"] == record.corrections[-1]
    assert dpo_rows[0]["rejected"][0]["content"] == record.completion


def test_dataset_ids_follow_content_and_cards_round_trip(tmp_path, records):
    rows, _ = builders.sft(records[:10])
    splits = builders.split(rows, SplitConfig())
    fields = {"source": {}, "counts": {}, "config": CurateConfig().model_dump(),
              "config_digest": CurateConfig().digest(), "flow_run_id": "x", "scrubber": {},
              "decontamination": {}}
    card = write_dataset(tmp_path, "sft", splits, fields)
    assert card == write_dataset(tmp_path, "sft", splits, fields)  # same rows, same dataset
    assert load_card(tmp_path / card.dataset_id).rows_digest == card.rows_digest
    assert len(load_split(tmp_path / card.dataset_id, "train")) == card.splits["train"]
    other = write_dataset(tmp_path, "sft", builders.split(rows[1:], SplitConfig()), fields)
    assert other.dataset_id != card.dataset_id


def test_config_rejects_out_of_range_values():
    with pytest.raises(ValueError, match="near_threshold"):
        CurateConfig.model_validate({"dedup": {"near_threshold": 1.5}})
    with pytest.raises(ValueError, match="unknown"):
        CurateConfig.model_validate({"dedup": {"unknown": 1}})


def test_a_tool_call_correction_becomes_a_tool_call_turn_in_trl_format():
    call = ('<tool_call>{"name": "set_timer", "arguments": {"minutes": 5, "label": "tea"}}'
            "</tool_call>")
    base = Record(request_id="req-1234567890abcdef", trace_id="t", contributor_id="c",
                  scopes=("sft", "dpo"), model_version="v",
                  messages=({"role": "user", "content": "tea timer, 5 min"},), completion="ok")
    rows, _ = builders.sft([replace(base, corrections=(call,))])
    answer = rows[0]["messages"][-1]
    assert answer["content"] == "" and len(answer["tool_calls"]) == 1
    assert answer["tool_calls"][0]["function"]["name"] == "set_timer"
    assert json.loads(answer["tool_calls"][0]["function"]["arguments"]) == {"minutes": 5,
                                                                           "label": "tea"}
    again, _ = builders.sft([replace(base, corrections=(call,))])
    assert again == rows  # ids come from the request: the same traces give the same rows
    pairs, _ = builders.dpo([replace(base, corrections=(call,))])
    assert pairs[0]["chosen"][0]["tool_calls"] == answer["tool_calls"]
    text, _ = builders.sft([replace(base, corrections=("Sure: " + call,))])
    assert "tool_calls" not in text[0]["messages"][-1]  # prose around it stays text
