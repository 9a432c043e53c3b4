"""Chat agreement: the shipped prompt set, its split, the score, the answer cache, the card."""

from __future__ import annotations

import copy
import io
import json
import re
from collections import Counter

import pytest
import torch

from compress import chat_agreement, checkpoint, report
from compress import store as store_mod
from compress.build import BuildOptions, plan, run
from compress.chat_prompts import CHAT_PROMPTS, SPLITS, ChatOptions, load, select, split_of
from compress.cli import parser
from compress.errors import CompressError
from compress.progress import Progress
from compress.schema import Card, ChatQuality
from compress.texts import CALIBRATION_TEXT

from .conftest import tree
from .helpers import build


# -- the prompt set ------------------------------------------------------------------------------
def test_the_prompt_set_is_varied_and_well_formed():
    prompts = load()
    assert len(prompts) >= 250
    kinds = Counter(p.kind for p in prompts)
    assert len(kinds) >= 5 and min(kinds.values()) >= 10, kinds
    assert len({p.id for p in prompts}) == len(prompts)
    assert sum(any(m["role"] == "system" for m in p.messages) for p in prompts) >= 10
    assert len({p.messages[-1]["content"] for p in prompts}) == len(prompts)
    # Short enough for a 2048-token model with a 64-token answer (SmolLM2: ~1.3 tokens a word).
    assert max(sum(len(m["content"].split()) for m in p.messages) for p in prompts) < 300


def test_the_halves_are_disjoint_fixed_and_mixed():
    prompts = load()
    test, validation = select(prompts, "test"), select(prompts, "validation")
    assert {p.id for p in test}.isdisjoint(p.id for p in validation)
    assert len(test) + len(validation) == len(prompts)
    assert min(len(test), len(validation)) >= 0.4 * len(prompts)
    # Fixed by the id alone (sha256, not Python's salted hash): pinned here.
    assert [split_of(i) for i in ("factual-001", "code-001", "math-001", "summary-001")] == [
        "test",
        "test",
        "validation",
        "test",
    ]
    assert select(load(), "test") == test  # the same order every time
    capped = select(prompts, "test", 32)
    assert capped == test[:32] and len({p.kind for p in capped}) >= 5  # a cap takes a mix
    with pytest.raises(CompressError, match="unknown chat split"):
        select(prompts, "train")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def test_the_prompt_set_is_disjoint_from_the_calibration_text():
    calibration = CALIBRATION_TEXT.read_text()
    flat = " ".join(calibration.split())
    contents = [m["content"] for p in load() for m in p.messages]
    assert not [c for c in contents if len(c) > 20 and " ".join(c.split()) in flat]
    n = 12
    words = _words(calibration)
    grams = {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
    shared = []
    for c in contents:
        w = _words(c)
        shared += [g for i in range(len(w) - n + 1) if (g := " ".join(w[i : i + n])) in grams]
    assert not shared, shared[:3]


def test_a_malformed_prompt_file_is_a_named_error(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "a", "kind": "x", "messages": [{"role": "user", "content": "hi"}]}\n')
    bad.write_text(bad.read_text() * 2)
    with pytest.raises(CompressError, match="duplicate id"):
        load(bad)
    bad.write_text('{"id": "a", "kind": "x", "messages": [{"role": "bot", "content": "hi"}]}\n')
    with pytest.raises(CompressError, match="role/content"):
        load(bad)
    assert load(CHAT_PROMPTS)


# -- the score -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tiny_base):
    tokenizer = checkpoint.load_tokenizer(tiny_base)
    base = checkpoint.load_model(tiny_base, "float32")
    same = checkpoint.load_model(tiny_base, "float32")
    noisy = checkpoint.load_model(tiny_base, "float32")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std())
    return tokenizer, base, same, noisy


PROMPTS = 6


def test_a_model_agrees_with_itself_and_a_perturbed_one_less(models):
    tokenizer, base, same, noisy = models
    prompts = select(load(), "test", PROMPTS)
    answers, cached = chat_agreement.base_answers(base, tokenizer, prompts, 8, "cpu")
    assert not cached and [a.id for a in answers] == [p.id for p in prompts]
    assert all(1 <= len(a.answer_tokens) <= 8 for a in answers)

    own = chat_agreement.score(same, base, tokenizer, prompts, answers, 6, "cpu", "test", 8)
    assert own.top1_agreement == 1.0 and own.exact_match == 1.0
    assert own.kl_to_base == pytest.approx(0.0, abs=1e-6)
    assert own.ci95["top1_agreement"] == [1.0, 1.0] and own.ci95["exact_match"] == [1.0, 1.0]
    assert own.prompts == PROMPTS
    assert own.answer_tokens == sum(len(a.answer_tokens) for a in answers)

    other = chat_agreement.score(noisy, base, tokenizer, prompts, answers, 6, "cpu", "test", 8)
    assert other.top1_agreement < 0.9 and other.kl_to_base > 0.01
    assert other.exact_match < 1.0
    for key in ("top1_agreement", "kl_to_base", "exact_match"):
        low, high = other.ci95[key]
        assert low <= getattr(other, key) <= high


def test_exact_match_compares_what_a_short_answer_has(models):
    tokenizer, base, same, noisy = models
    prompts = select(load(), "test", 3)
    answers, _ = chat_agreement.base_answers(base, tokenizer, prompts, 8, "cpu")
    for a in answers:  # as if the base had stopped after two tokens
        a.answer_tokens = a.answer_tokens[:2]
    s = chat_agreement.score(same, base, tokenizer, prompts, answers, 6, "cpu")
    assert s.exact_match == 1.0 and s.answer_tokens == sum(len(a.answer_tokens) for a in answers)


def test_the_bootstrap_is_seeded_and_brackets_the_estimate():
    gen = torch.Generator().manual_seed(1)
    per = {
        "hits": torch.randint(0, 10, (50,), generator=gen).double(),
        "count": torch.full((50,), 10.0, dtype=torch.float64),
        "kl": torch.rand(50, generator=gen, dtype=torch.float64),
        "match": (torch.rand(50, generator=gen) > 0.5).double(),
    }
    ci = chat_agreement.bootstrap(per)
    assert ci == chat_agreement.bootstrap(per)
    top1 = float(per["hits"].sum() / per["count"].sum())
    assert ci["top1_agreement"][0] < top1 < ci["top1_agreement"][1]
    assert 0 < ci["exact_match"][1] - ci["exact_match"][0] < 0.5


# -- the cache -----------------------------------------------------------------------------------
def test_base_answers_are_cached_once_and_reused(models, tmp_path, monkeypatch):
    tokenizer, base, same, noisy = models
    calls = []
    real = chat_agreement.greedy

    def counting(model, *args, **kwargs):
        calls.append("base" if model is base else "variant")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(chat_agreement, "greedy", counting)
    options = ChatOptions(prompts=4, max_tokens=6, exact_match_tokens=4)
    folder = tmp_path / "store" / "basefp"
    first = chat_agreement.measure(noisy, base, tokenizer, options, folder, "basefp")
    assert calls == ["base", "variant"]
    files = list(folder.glob("chat-answers-test-t6-*.json"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o644"
    assert [a["id"] for a in json.loads(files[0].read_text())["answers"]] == [
        p.id for p in options.selection()
    ]

    calls.clear()
    again = chat_agreement.measure(noisy, base, tokenizer, options, folder, "basefp")
    assert calls == ["variant"] and again == first  # the base did not answer again
    assert list(folder.iterdir()) == files  # no temp file left behind

    calls.clear()
    longer = ChatOptions(prompts=4, max_tokens=7, exact_match_tokens=4)
    chat_agreement.measure(noisy, base, tokenizer, longer, folder, "basefp")
    assert calls == ["base", "variant"]  # another length cap is another set of answers
    chat_agreement.measure(noisy, base, tokenizer, options, folder, "otherfp")
    assert calls == ["base", "variant", "base", "variant"]  # another reference model too


# -- the build -----------------------------------------------------------------------------------
def test_a_build_cards_chat_agreement_and_the_next_build_reuses_the_answers(tiny_base, store):
    card, path, events = build(tiny_base, "prune-0.25", store)
    chat = card["quality"]["chat"]
    assert list(chat) == list(ChatQuality.model_fields)  # every field filled
    assert chat["split"] == "test" and chat["prompts"] == 3 and chat["max_new_tokens"] == 6
    assert chat["exact_match_tokens"] == 4 and 3 <= chat["answer_tokens"] <= 18
    assert 0 <= chat["top1_agreement"] <= 1 and chat["kl_to_base"] >= 0
    assert set(chat["ci95"]) == {"top1_agreement", "kl_to_base", "exact_match"}
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages[-2:] == ["evaluate", "chat"] and "chat" in card["timings_s"]
    cached = list((store / card["base"]["fingerprint"]).glob("chat-answers-*.json"))
    assert len(cached) == 1

    card2, _path2, events2 = build(tiny_base, "fp8", store)
    logs = [e["message"] for e in events2 if e["event"] == "log"]
    assert any(m.startswith("chat: base answers read from") for m in logs)
    assert list((store / card["base"]["fingerprint"]).glob("chat-answers-*.json")) == cached
    assert card2["quality"]["chat"]["answer_tokens"] == chat["answer_tokens"]
    # The cache file beside the variants does not disturb listing them.
    assert len(store_mod.list_variants(store)) == 2


def test_chat_prompts_zero_skips_the_stage(tiny_base, store):
    options = BuildOptions(
        base=tiny_base,
        recipe="fp8",
        store=store,
        eval_windows=2,
        eval_passages=2,
        chat=ChatOptions(prompts=0),
    )
    out = io.StringIO()
    card, _ = run(plan(options), Progress(json_out=out, bars=False))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "chat" not in events[0]["stages"]
    assert "chat" not in card.dump()["quality"] and card.quality.chat.top1_agreement is None
    assert not list(store.rglob("chat-answers-*"))


@pytest.mark.parametrize(
    ("chat", "message"),
    [
        (ChatOptions(max_tokens=0), "--chat-max-tokens must be >= 1"),
        (ChatOptions(prompts=-1), "--chat-prompts must be >= 0"),
        (ChatOptions(split="train"), "unknown chat split"),
    ],
)
def test_bad_chat_options_fail_before_the_store_is_touched(tiny_base, store, chat, message):
    with pytest.raises(CompressError, match=message):
        plan(BuildOptions(base=tiny_base, recipe="fp8", store=store, chat=chat))
    assert tree(store) == []


def test_the_cli_options():
    args = parser().parse_args(["build", "--base", "b", "--recipe", "w8a8"])
    assert (args.chat_prompts, args.chat_max_tokens, args.chat_split) == (None, 64, "test")
    args = parser().parse_args(
        ["build", "--base", "b", "--recipe", "w8a8", "--chat-prompts", "0", "--chat-split"]
        + ["validation", "--chat-max-tokens", "16"]
    )
    assert (args.chat_prompts, args.chat_max_tokens, args.chat_split) == (0, 16, "validation")
    assert SPLITS == ("validation", "test")


# -- the report ----------------------------------------------------------------------------------
def _card(name: str, chat: dict | None) -> Card:
    quality = {
        "perplexity": 16.5,
        "perplexity_change": 0.03,
        "base_perplexity": 16.0,
        "kl_to_base": 0.02,
        "top1_agreement": 0.95,
        "last_word_accuracy": 0.4,
        "base_last_word_accuracy": 0.4,
    }
    return Card.model_validate(
        {
            "variant": f"m-{name}",
            "base": {"name": "m", "fingerprint": "f", "size_bytes": 2e8, "parameters": 1e8},
            "quality": {**quality, **({"chat": chat} if chat else {})},
            "size": {"bytes": 1e8, "size_ratio": 0.5},
        }
    )


def test_the_report_shows_chat_agreement_beside_the_text_figures(tmp_path):
    chat = {
        "split": "test",
        "prompts": 146,
        "top1_agreement": 0.912,
        "exact_match": 0.75,
        "exact_match_tokens": 16,
        "ci95": {"top1_agreement": [0.88, 0.94]},
    }
    table = report.rows([(tmp_path / "a", _card("w8a8", chat)), (tmp_path / "b", _card("x", None))])
    text = report.markdown(table)
    row = next(line for line in text.splitlines() if line.startswith("| m-w8a8"))
    assert "| 0.40 | 0.912 [0.880, 0.940] | 0.75 @16 |" in row  # after the last-word column
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    assert row.count("|") == header.count("|")
    assert "| 0.40 | - | - |" in next(line for line in text.splitlines() if "| m-x" in line)
    assert "146 test prompts" in text
    assert "not measured" in report.markdown(report.rows([(tmp_path / "b", _card("x", None))]))


def test_a_template_that_refuses_a_system_role_gets_it_in_the_first_user_turn(models):
    tokenizer = copy.deepcopy(models[0])
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.decode(chat_agreement.render(tokenizer, messages))
    assert text == "user: Be brief.\n\nHi\nassistant:"
    plain = tokenizer.decode(chat_agreement.render(tokenizer, messages[1:]))
    assert plain == "user: Hi\nassistant:"
