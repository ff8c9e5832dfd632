"""lm-evaluation-harness as a client of the swarm: its scores equal the same run in-process.

The harness's `local-completions` model scores a multiple-choice task through `/v1/completions`
(token-id prompts, `echo` with `logprobs`: the log-likelihood of each continuation) and its
`local-chat-completions` model runs a generate-until task through `/v1/chat/completions`. The
same tasks then run on the harness's `hf` backend over the same weights in this process. Both
tasks read local JSONL files: nothing comes from a hub.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHOICES = [
    ("The capital of France is", [" Paris", " Rome", " a small dog"], 0),
    ("Two plus two equals", [" four", " seven"], 0),
    ("Water freezes at zero degrees", [" Celsius", " Fahrenheit", " Kelvin"], 0),
    ("The opposite of hot is", [" cold", " warm"], 0),
    ("A week has seven", [" days", " hours", " planets"], 0),
    ("Bees make", [" honey", " steel"], 0),
]
QUESTIONS = ["Name a colour.", "What is 3 + 4?", "Say hello in French.", "List two fruits."]


def write_tasks(root: Path) -> list[str]:
    """Two harness tasks over local files: log-likelihood choices and generate-until."""
    (root / "choice.jsonl").write_text("".join(
        json.dumps({"query": q, "choices": c, "gold": g}) + "\n" for q, c, g in CHOICES))
    (root / "gen.jsonl").write_text("".join(
        json.dumps({"question": q, "answer": "unused"}) + "\n" for q in QUESTIONS))
    common = "dataset_path: json\ntest_split: train\n"
    (root / "choice.yaml").write_text(
        "task: shoal_choice\n" + common
        + f"dataset_kwargs:\n  data_files:\n    train: {root / 'choice.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{query}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{gold}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    (root / "gen.yaml").write_text(
        "task: shoal_gen\n" + common
        + f"dataset_kwargs:\n  data_files:\n    train: {root / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "  temperature: 0\nmetric_list:\n  - metric: exact_match\n")
    return ["shoal_choice", "shoal_gen"]


def run(model: str, model_args: dict, tasks: list[str], include: Path, chat: bool) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # only these tasks: indexing the harness's own thousands of task files takes minutes
    manager = TaskManager(include_path=str(include), include_defaults=False)
    return simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=manager,
                           apply_chat_template=chat, log_samples=True, batch_size=1,
                           random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                           fewshot_random_seed=0)


def samples(result: dict, task: str) -> list:
    return [s["filtered_resps"] for s in sorted(result["samples"][task],
                                                key=lambda s: s["doc_id"])]


def test_harness_scores_through_the_swarm_equal_the_in_process_model(
        tiny_swarm, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    choice, gen = write_tasks(tmp_path)
    remote = {"model": "tiny", "tokenizer": str(tiny_model_dir), "max_retries": 1,
              "num_concurrent": 1}
    loglik = run("local-completions", {**remote, "tokenizer_backend": "huggingface",
                                       "base_url": f"{tiny_swarm.base_url}/v1/completions"},
                 [choice], tmp_path, chat=False)
    chatted = run("local-chat-completions", {
        **remote, "base_url": f"{tiny_swarm.base_url}/v1/chat/completions"},
        [gen], tmp_path, chat=True)
    local = run("hf", {"pretrained": str(tiny_model_dir), "dtype": "float32", "device": "cpu"},
                [choice], tmp_path, chat=False)
    local_chat = run("hf", {"pretrained": str(tiny_model_dir), "dtype": "float32",
                            "device": "cpu"}, [gen], tmp_path, chat=True)

    # log-likelihoods of every continuation, through the swarm and in process
    ours, theirs = samples(loglik, choice), samples(local, choice)
    assert len(ours) == len(CHOICES)
    for mine, ref in zip(ours, theirs):
        assert len(mine) == len(ref)
        for (ll, greedy), (ll_ref, greedy_ref) in zip(mine, ref):
            assert math.isfinite(ll) and ll < 0
            assert ll == pytest.approx(ll_ref, abs=2e-3, rel=1e-3)
            assert greedy == greedy_ref
    assert loglik["results"][choice]["acc,none"] == local["results"][choice]["acc,none"]

    # greedy generations through the chat API, with the chat template, and in process
    assert samples(chatted, gen) == samples(local_chat, gen)
    assert all(isinstance(s[0], str) for s in samples(chatted, gen))
