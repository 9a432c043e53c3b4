"""Validation and test splits of the held-out text, bootstrap intervals, and who reads which.

Recipes and settings are chosen on validation; cards report test (compress/texts.py). These
tests check that the two halves share no text, cover the whole text, are what the docs say,
that intervals behave, that a build's card says which split and carries intervals, and that
the tools under bench/ never read the test split.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
import torch

from compress import checkpoint, evaluate, texts
from compress.errors import CompressError
from compress.progress import Progress

from .conftest import REPO
from .helpers import build

HELD = texts.read_text(texts.HELDOUT_TEXT)
DEFAULT_MODEL = REPO / ".leanserve" / "models" / "smollm2-135m-instruct"


def long_paragraphs(text: str) -> set[str]:
    # Short paragraphs (headings, "Notes") may repeat anywhere; real text must not.
    return {" ".join(p.split()) for p in text.split("\n\n") if len(p) > 80}


def test_every_block_is_in_exactly_one_split():
    n = len(texts.blocks(HELD))
    chosen = texts.split_blocks(n)
    assert set(chosen["validation"]).isdisjoint(chosen["test"])
    assert sorted(chosen["validation"] + chosen["test"]) == list(range(n))
    # One block of every consecutive pair each: both halves run through the whole text.
    for first in range(0, n - 1, 2):
        assert {first, first + 1} & set(chosen["validation"])
        assert {first, first + 1} & set(chosen["test"])


def test_splits_share_no_paragraph_or_passage():
    validation = texts.split_text(HELD, "validation")
    test = texts.split_text(HELD, "test")
    # heldout.txt repeats some paragraphs word for word: each lands in one split only.
    assert long_paragraphs(validation).isdisjoint(long_paragraphs(test))
    assert long_paragraphs(validation) | long_paragraphs(test) == long_paragraphs(HELD)
    for passage in texts.last_word_passages(validation):
        assert passage.context[:200] not in " ".join(test.split())
    for passage in texts.last_word_passages(test):
        assert passage.context[:200] not in " ".join(validation.split())


def test_a_repeated_paragraph_lands_in_one_split_only():
    repeated = "This paragraph is quoted twice in the text, word for word, as pydoc does. " * 3
    paras = [f"Paragraph {i} " + "filler words " * 120 for i in range(8)]
    text = "\n\n".join(paras[:2] + [repeated] + paras[2:6] + ["  " + repeated] + paras[6:])
    assert text.count(repeated.strip()) == 2
    found = [texts.split_text(text, split).count(repeated.strip()) for split in texts.SPLITS]
    assert sorted(found) == [0, 1]


def test_splits_are_fixed_by_the_seed():
    assert texts.split_text(HELD, "test") == texts.split_text(HELD, "test", seed=0)
    assert texts.split_text(HELD, "test", seed=1) != texts.split_text(HELD, "test", seed=0)
    assert texts.split_blocks(51, seed=3) == texts.split_blocks(51, seed=3)


def test_unknown_split_is_refused():
    with pytest.raises(CompressError, match="unknown split 'train'"):
        texts.split_text(HELD, "train")


def test_sizes_as_documented():
    """The counts compress/texts.py and the READMEs give for the shipped text."""
    assert len(texts.blocks(HELD)) == 51
    assert len(texts.last_word_passages(texts.split_text(HELD, "validation"))) == 45
    assert len(texts.last_word_passages(texts.split_text(HELD, "test"))) == 50
    if not (DEFAULT_MODEL / "tokenizer.json").is_file():
        pytest.skip(f"window counts need the default model's tokenizer in {DEFAULT_MODEL}")
    tokenizer = checkpoint.load_tokenizer(DEFAULT_MODEL)
    counts = {
        split: len(texts.windows(texts.token_ids(tokenizer, texts.split_text(HELD, split)), 513))
        for split in texts.SPLITS
    }
    assert counts == {"validation": 25, "test": 29}


@pytest.mark.parametrize("split", texts.SPLITS)
def test_windows_come_from_the_first_and_the_last_quarter(tiny_base, split):
    tokenizer = checkpoint.load_tokenizer(tiny_base)
    ids = texts.token_ids(tokenizer, texts.split_text(HELD, split))
    ws = texts.windows(ids, 513)
    # Where a window is in the original text: its longest line, found there.
    where = [HELD.find(max(tokenizer.decode(w).splitlines(), key=len)) for w in (ws[0], ws[-1])]
    assert -1 not in where
    assert where[0] < len(HELD) / 4 and where[1] > 3 * len(HELD) / 4


def test_a_short_split_is_refused_before_building(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(("one two three four five six seven eight nine ten " * 30).strip())
    # One paragraph is one block: one split has all of it, the other nothing.
    empty = next(split for split in texts.SPLITS if not texts.split_blocks(1)[split])
    with pytest.raises(CompressError, match="split of .* is too short"):
        texts.read_split(short, empty)


def test_spread_keeps_order_and_never_asks_for_more_than_there_is():
    items = list(range(30))
    assert texts.spread(items, None) == items
    assert texts.spread(items, 48) == items
    some = texts.spread(items, 6)
    assert len(some) == 6 and some == sorted(some) and some == texts.spread(items, 6)
    assert texts.spread(items, 0) == []


# -- bootstrap intervals ---------------------------------------------------------------------
def fake_windows(n: int, shift: float = 0.05, seed: int = 0) -> list[dict]:
    """Per-window sums of a variant a little worse than its base; windows differ a lot in
    difficulty (as real text does), the gap between the models much less."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        hard = 2.0 + torch.rand(1, generator=g).item()
        gap = shift * (0.5 + torch.rand(1, generator=g).item())
        out.append(
            {
                "nll": 512 * (hard + gap),
                "base_nll": 512 * hard,
                "kl": 512 * gap,
                "agree": int(512 * (0.9 + 0.05 * torch.rand(1, generator=g).item())),
                "count": 512,
            }
        )
    return out


def point(per_window: list[dict]) -> dict[str, float]:
    totals = torch.tensor([sum(w[k] for w in per_window) for k in evaluate.STAT_KEYS])
    return {name: float(v) for name, v in evaluate.summarize(totals).items()}


def test_interval_contains_the_estimate_and_narrows_with_more_windows():
    many = fake_windows(64)
    few = many[:8]
    ci_many, ci_few = evaluate.bootstrap_ci95(many), evaluate.bootstrap_ci95(few)
    assert set(ci_many) == set(evaluate.CI_METRICS)
    for name in evaluate.CI_METRICS:
        for ci, windows in ((ci_many, many), (ci_few, few)):
            low, high = ci[name]
            assert low < point(windows)[name] < high, name
        assert ci_few[name][1] - ci_few[name][0] > ci_many[name][1] - ci_many[name][0], name
    assert evaluate.bootstrap_ci95(many) == ci_many  # fixed seed


def test_interval_is_paired():
    """Resampling variant and base together: the change is known far better than either
    perplexity, and a model against itself has a change interval of exactly zero."""
    ci = evaluate.bootstrap_ci95(fake_windows(32))
    ppl_width = ci["perplexity"][1] / ci["perplexity"][0] - 1
    change_width = ci["perplexity_change"][1] - ci["perplexity_change"][0]
    assert change_width < ppl_width / 5
    same = evaluate.bootstrap_ci95(fake_windows(32, shift=0.0))
    assert same["perplexity_change"] == [0.0, 0.0] and same["kl_to_base"] == [0.0, 0.0]


def test_evaluate_reads_only_its_split(tiny_base):
    model = checkpoint.load_model(tiny_base)
    tokenizer = checkpoint.load_tokenizer(tiny_base)
    out = io.StringIO()
    progress = Progress(json_out=out, bars=False)
    q = evaluate.evaluate(model, model, tokenizer, HELD, seq_len=256, max_windows=10**6,
                          max_passages=2, progress=progress, split="validation")  # fmt: skip
    part = texts.split_text(HELD, "validation")
    expected = len(texts.windows(texts.token_ids(tokenizer, part), 257))
    assert q.split == "validation" and q.windows == expected and q.tokens == expected * 256
    assert f"the validation split has {expected} windows; using all" in out.getvalue()
    assert set(q.ci95) == set(evaluate.CI_METRICS)
    assert q.ci95["perplexity_change"] == [0.0, 0.0] and q.ci95["top1_agreement"] == [1.0, 1.0]
    low, high = q.ci95["perplexity"]
    assert low <= q.perplexity <= high
    test = evaluate.evaluate(model, model, tokenizer, HELD, seq_len=256, max_windows=3,
                             max_passages=0, split="test")  # fmt: skip
    assert test.windows == 3 and test.perplexity != q.perplexity


def test_build_card_reports_the_test_split_with_intervals(tiny_base, tmp_path):
    card, _path, _events = build(tiny_base, "prune-0.25", tmp_path / "a", eval_windows=4)
    q = card["quality"]
    assert q["split"] == "test" and q["windows"] == 4 and q["tokens"] == 4 * 512
    assert set(q["ci95"]) == {"perplexity", "perplexity_change", "kl_to_base", "top1_agreement"}
    for name, (low, high) in q["ci95"].items():
        assert low <= q[name] <= high, name
    assert card["data"]["eval"]["path"] == str(texts.HELDOUT_TEXT)

    other, _path, _events = build(
        tiny_base, "prune-0.25", tmp_path / "b", eval_windows=4, eval_split="validation"
    )
    assert other["quality"]["split"] == "validation"
    assert other["quality"]["base_perplexity"] != q["base_perplexity"]  # other text


# -- the sweep tools read validation only --------------------------------------------------
BENCH = REPO / "bench"


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _validation_evaluate(node: ast.AST) -> bool:
    """An evaluate(...) call that passes split="validation"."""
    return (
        isinstance(node, ast.Call)
        and _name(node.func) == "evaluate"
        and any(
            k.arg == "split" and isinstance(k.value, ast.Constant) and k.value.value == "validation"
            for k in node.keywords
        )
    )


def held_out_problems(source: str) -> list[str]:
    """Ways a bench tool could see the test split: an evaluate call without
    split="validation", the word "test" as a split, or held-out text going anywhere but into
    such an evaluate call (directly, or through a variable used only there)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    problems = []
    for node in ast.walk(tree):
        is_evaluate = isinstance(node, ast.Call) and _name(node.func) == "evaluate"
        if is_evaluate and not _validation_evaluate(node):
            problems.append(f"line {node.lineno}: evaluate without split='validation'")
        if isinstance(node, ast.Constant) and node.value == "test":
            problems.append(f"line {node.lineno}: names {node.value!r}")
    for node in ast.walk(tree):
        if _name(node) != "HELDOUT_TEXT":  # HELDOUT_TEXT or texts.HELDOUT_TEXT, not imports
            continue
        read = parents[node]
        if not (isinstance(read, ast.Call) and _name(read.func) == "read_text"):
            problems.append(f"line {node.lineno}: HELDOUT_TEXT used other than read_text()")
            continue
        into = parents[read]
        if _validation_evaluate(into):
            continue
        if isinstance(into, ast.Assign) and len(into.targets) == 1:
            var = into.targets[0].id
            uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == var]
            if all(isinstance(n.ctx, ast.Store) or _validation_evaluate(parents[n]) for n in uses):
                continue
        problems.append(f"line {node.lineno}: held-out text reaches more than evaluate()")
    return problems


def sweep_tools() -> list[Path]:
    """bench/ tools that evaluate quality in-process (to choose settings or check a device)."""
    return sorted(
        p for p in BENCH.glob("*.py") if "evaluate" in p.read_text() and "HELDOUT" in p.read_text()
    )


def test_the_check_catches_a_tool_that_reads_the_test_split():
    good = (
        "from compress import evaluate, texts\n"
        "held = texts.read_text(texts.HELDOUT_TEXT)\n"
        "q = evaluate.evaluate(m, b, t, held, split='validation')\n"
    )
    assert held_out_problems(good) == []
    for bad in (
        good.replace(", split='validation'", ""),
        good.replace("'validation'", "'test'"),
        good + "ids = texts.token_ids(t, held)\n",
        good + "n = texts.windows(texts.token_ids(t, texts.read_text(texts.HELDOUT_TEXT)), 9)\n",
        good + "p = texts.split_text(held, 'test')\n",
    ):
        assert held_out_problems(bad), bad


def test_bench_sweep_tools_read_only_the_validation_split():
    tools = sweep_tools()
    assert BENCH / "distill_sweep.py" in tools
    for path in tools:
        assert held_out_problems(path.read_text()) == [], path.name


# -- the CLI and the report -------------------------------------------------------------------
def test_cli_measures_on_test_unless_told_and_reads_all_of_the_split():
    from compress.cli import parser

    args = parser().parse_args(["build", "--base", "b", "--recipe", "w8a8"])
    assert args.eval_split == "test" and args.eval_windows is None and args.eval_passages is None
    args = parser().parse_args(
        ["build", "--base", "b", "--recipe", "w8a8", "--eval-split", "validation"]
    )
    assert args.eval_split == "validation"
    with pytest.raises(SystemExit):
        parser().parse_args(["build", "--base", "b", "--recipe", "w8a8", "--eval-split", "train"])


def test_report_shows_intervals_and_the_split(tmp_path):
    from compress import report
    from compress.schema import Card

    quality = {
        "perplexity": 16.26, "base_perplexity": 16.0, "perplexity_change": 0.01625,
        "kl_to_base": 0.0123, "top1_agreement": 0.953, "last_word_accuracy": 0.4,
        "base_last_word_accuracy": 0.4, "split": "test", "windows": 29,
        "ci95": {"perplexity": [15.1, 17.3], "perplexity_change": [0.011, 0.022],
                 "kl_to_base": [0.0101, 0.0150], "top1_agreement": [0.948, 0.958]},
    }  # fmt: skip
    card = Card.model_validate(
        {
            "variant": "m-w8a8",
            "base": {"name": "m", "fingerprint": "f", "size_bytes": 2e8, "parameters": 1e8},
            "quality": quality,
            "size": {"bytes": 1e8, "size_ratio": 0.5},
        }
    )
    old = Card.model_validate(
        {**card.dump(), "variant": "m-old", "quality": {**quality, "split": None, "ci95": {}}}
    )
    text = report.markdown(report.rows([(tmp_path / "a", card), (tmp_path / "b", old)]))
    assert "| +1.6 % [+1.1, +2.2] | 0.0123 [0.0101, 0.0150] | 0.953 [0.948, 0.958] |" in text
    assert "| m-old | 16.26 | +1.6 % | 0.0123 | 0.953 |" in text  # a card without intervals
    assert "test split (29 windows)" in text and "whole eval text" in text
