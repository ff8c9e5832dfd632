"""Model import: HF directories and GGUF files become verified HF-format versions; bad input
is refused with a clear error and leaves the store unchanged."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from registry.exceptions import ModelImportError
from registry.publish import import_model


def store_files(reg) -> set[str]:
    return {str(p.relative_to(reg.path)) for p in reg.path.rglob("*") if p.is_file()}


def test_hf_dir_import_round_trips_exactly(tiny_registry, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    reg, vid = tiny_registry
    out = tmp_path / "checkout"
    manifest = reg.client().checkout(vid, out)
    assert manifest.num_layers == 4 and manifest.lineage.parent is None
    assert manifest.lineage.source["file"] == tiny_model_dir.name
    assert {f"model-layer-{i:03d}.safetensors" for i in range(4)} <= set(manifest.files)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    imported = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, imported.state_dict()[name]), name
    ids = torch.tensor([[1, 5, 7, 11, 13]])
    assert torch.equal(original(ids).logits, imported(ids).logits)


def test_reimport_is_idempotent(tiny_registry, tiny_model_dir):
    reg, vid = tiny_registry
    again = import_model(reg.store, tiny_model_dir, name="tiny")
    assert again.version_id == vid and not again.created


def test_open_span_fetches_only_its_layers(tiny_registry, tmp_path):
    reg, vid = tiny_registry
    client = reg.client()
    manifest = client.open_span(vid, 1, 3, tmp_path / "span")
    present = {p.name for p in (tmp_path / "span").iterdir()}
    assert {"model-layer-001.safetensors", "model-layer-002.safetensors"} <= present
    assert not {"model-layer-000.safetensors", "model-layer-003.safetensors",
                "model-shared.safetensors"} & present
    expected = sum(manifest.files[f].size for f in present if f != "manifest.json")
    assert client.bytes_read == expected
    client.verify_dir(tmp_path / "span", partial=True)


def test_registry_on_fsspec_url(tmp_path, tiny_model_dir):
    """The same code runs on a non-local filesystem (fsspec's in-memory one here)."""
    import uuid

    from registry.publish import promote
    from tests.conftest import make_registry

    reg = make_registry(tmp_path, url=f"memory://shoal-{uuid.uuid4().hex}")
    vid = import_model(reg.store, tiny_model_dir, name="tiny",
                       release_keys=[reg.keys["release"]]).version_id
    promote(reg.store, vid, "staging", [reg.keys["promote"]])
    client = reg.client()
    assert client.resolve("tiny@staging") == vid
    client.checkout(vid, tmp_path / "co")
    client.verify_dir(tmp_path / "co")


# bad input ---------------------------------------------------------------------------------------

def corrupt_copy(src, dst, mutate):
    shutil.copytree(src, dst)
    mutate(dst)
    return dst


def truncate_shard(d):
    shard = next(d.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-1000])


def bad_header(d):
    shard = next(d.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[8:9] = b"["  # header no longer a JSON object
    shard.write_bytes(bytes(data))


def unsupported_arch(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (d / "config.json").write_text(json.dumps(cfg))


def drop_tensor(d):
    from safetensors.torch import load_file, save_file

    shard = next(d.glob("*.safetensors"))
    tensors = load_file(shard)
    tensors.pop("model.layers.2.mlp.up_proj.weight")
    save_file(tensors, shard)


@pytest.mark.parametrize("case, mutate, message", [
    ("truncated safetensors", truncate_shard, r"model\.safetensors: .*out of range"),
    ("malformed header", bad_header, r"model\.safetensors: header is not"),
    ("unsupported architecture", unsupported_arch, "unsupported architecture 'gpt2'"),
    ("missing tensor", drop_tensor, r"missing tensors \['model\.layers\.2\.mlp\.up_proj"),
])
def test_bad_model_dir_refused_store_unchanged(registry, tiny_model_dir, tmp_path, case, mutate,
                                               message):
    before = store_files(registry)
    src = corrupt_copy(tiny_model_dir, tmp_path / "bad", mutate)
    with pytest.raises(ModelImportError, match=message):
        import_model(registry.store, src, name="bad")
    assert store_files(registry) == before


def test_missing_path_and_non_model_dir_refused(registry, tmp_path):
    before = store_files(registry)
    with pytest.raises(ModelImportError, match="no such file or directory"):
        import_model(registry.store, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelImportError, match=r"empty: not a model directory"):
        import_model(registry.store, tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelImportError, match=r"notes\.txt: not a GGUF file"):
        import_model(registry.store, tmp_path / "notes.txt")
    assert store_files(registry) == before


@pytest.mark.real_model
def test_truncated_gguf_refused(registry, default_gguf, tmp_path):
    before = store_files(registry)
    cut = tmp_path / "cut.gguf"
    with open(default_gguf, "rb") as src:
        cut.write_bytes(src.read(5_000_000))
    with pytest.raises(ModelImportError, match=r"cut\.gguf: "):
        import_model(registry.store, cut)
    assert store_files(registry) == before


@pytest.mark.real_model
def test_default_import_matches_gguf_token_for_token(imported_default, default_gguf):
    """The imported safetensors copy generates exactly what the GGUF file does, greedily."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, checkout = imported_default
    where, fname = str(default_gguf.parent), default_gguf.name
    direct = AutoModelForCausalLM.from_pretrained(where, gguf_file=fname, dtype=torch.float32)
    direct_tok = AutoTokenizer.from_pretrained(where, gguf_file=fname)
    imported = AutoModelForCausalLM.from_pretrained(checkout, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(checkout)
    prompts = ["What is the capital of France?", "Write a haiku about the sea.",
               "List three prime numbers."]
    answers = []
    for prompt in prompts:
        msgs = [{"role": "user", "content": prompt}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        direct_ids = direct_tok.apply_chat_template(msgs, add_generation_prompt=True,
                                                    return_tensors="pt",
                                                    return_dict=True)["input_ids"]
        assert torch.equal(ids, direct_ids), "tokenizer or chat template changed in import"
        a = direct.generate(ids, max_new_tokens=24, do_sample=False)
        b = imported.generate(ids, max_new_tokens=24, do_sample=False)
        assert a.tolist() == b.tolist(), prompt
        answers.append(tok.decode(b[0, ids.shape[1]:], skip_special_tokens=True))
    assert "Paris" in answers[0]  # real weights: the answer is right, not just equal


def test_registry_bench_runs_on_tiny(tiny_registry, tmp_path):
    from flows.config import ShoalConfig
    from registry.bench import run_registry_bench

    reg, vid = tiny_registry
    cfg = ShoalConfig(home=tmp_path / "home", registry_url=str(reg.path))
    report = run_registry_bench(cfg, vid, tmp_path / "out", span=2, import_default=False)
    assert report["manifest_build_mb_s"] > 0
    assert report["span"]["layers"] == "1:3" and 0 < report["span"]["fraction_of_model"] < 1
    assert (tmp_path / "out" / "registry.json").exists()


def test_checkout_roles_share_one_scheme(tiny_registry, tmp_path):
    """Each role fetches exactly its files into `<hex16>-<role>`; a bad span is a ValueError."""
    reg, vid = tiny_registry
    client = reg.client()
    manifest = client.manifest(vid)
    head, _ = client.checkout_role(vid, tmp_path, "head")
    span, _ = client.checkout_role(vid, tmp_path, "span", (1, 3))
    full, _ = client.checkout_role(vid, tmp_path, "full")
    hex16 = vid.removeprefix("sha256:")[:16]
    assert [head.name, span.name, full.name] == [f"{hex16}-head", f"{hex16}-L1-3", f"{hex16}-full"]
    files = lambda d: sorted(p.name for p in d.iterdir() if p.name != "manifest.json")  # noqa: E731
    assert files(full) == sorted(manifest.files)
    assert "model-shared.safetensors" in files(head)
    assert not any(f.startswith("model-layer-") for f in files(head))
    assert {f for f in files(span) if f.startswith("model-layer-")} == {
        "model-layer-001.safetensors", "model-layer-001.merkle",
        "model-layer-002.safetensors", "model-layer-002.merkle"}
    with pytest.raises(ValueError):
        manifest.files_for("span", (3, 99))
    with pytest.raises(ValueError):
        manifest.files_for("everything")
