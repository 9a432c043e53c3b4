"""Routing, /v1/models and the metrics read a variant's figures from its card (compress.schema):
quality is top-1 agreement, cost the measured speed-up (else the size ratio), latency priors the
1-stream figures. Cards here are real ones that compress wrote (bench/results)."""

from __future__ import annotations

import json

from compress.schema import Card
from server.backends.registry import Backend, Registry, engine_client
from server.backends.remote_engine import RemoteEngine
from server.metrics.registry import Metrics
from server.models_api.router import _summary
from server.routing.service import (
    DEFAULT_TPOT_S,
    DEFAULT_TTFT_S,
    base_tokens_per_s,
    prior_latency,
    quality_of,
    speedup_of,
)
from tests.server.gateway import REPO

RESULTS = REPO / "bench" / "results"
MEASURED = json.loads((RESULTS / "w4a16.card.json").read_text())  # built with --speed
UNMEASURED = json.loads((RESULTS / "w4a16-g32-32samples.card.json").read_text())


def backend(name: str, card: dict | None, variant: str | None = "v") -> Backend:
    url = "http://127.0.0.1:9"  # discard port: nothing is sent in these tests
    return Backend(
        name,
        RemoteEngine(name, url),
        engine_client(url, 5),
        card=Card.model_validate(card) if card is not None else None,
        variant=variant,
    )


def test_figures_come_from_a_measured_card():
    b = backend("m:w4a16", MEASURED)
    assert quality_of(b) == MEASURED["quality"]["top1_agreement"] == 0.884644
    assert speedup_of(b) == MEASURED["speed"]["speedup_32"] == 0.5713
    one = MEASURED["speed"]["variant"]["streams_1"]
    assert prior_latency(b) == (one["ttft_s_mean"], 1 / one["tokens_per_s"])
    registry = Registry("m")
    registry.add(b)
    assert base_tokens_per_s(registry) == MEASURED["speed"]["base"]["streams_32"]["tokens_per_s"]


def test_an_unmeasured_card_is_priced_by_its_size():
    b = backend("m:w4a16-g32", UNMEASURED)
    assert UNMEASURED["speed"]["status"].startswith("skipped")
    assert speedup_of(b) == 1 / UNMEASURED["size"]["size_ratio"]
    assert prior_latency(b) == (DEFAULT_TTFT_S, DEFAULT_TPOT_S)


def test_no_card_or_a_partial_one_reads_as_unknown():
    for card in (None, {}, {"recipe": {"name": "x"}, "speed": None}):
        b = backend("m:x", card)
        assert quality_of(b) == 0.0 and speedup_of(b) == 1.0
        assert prior_latency(b) == (DEFAULT_TTFT_S, DEFAULT_TPOT_S)
    base = backend("m", None, variant=None)
    assert quality_of(base) == 1.0 and speedup_of(base) == 1.0


def test_models_summary_of_a_card():
    assert _summary(None) is None
    assert _summary(Card.model_validate(MEASURED)) == {
        "recipe": "w4a16",
        "perplexity": 16.59992,
        "perplexity_change": 0.055593,
        "kl_to_base": 0.049278,
        "top1_agreement": 0.884644,
        "size_bytes": 118177024,
        "size_ratio": 0.4392,
        "speedup_32": 0.5713,
    }


def test_card_series():
    metrics = Metrics()
    metrics.set_card("m:w4a16", "w4a16", Card.model_validate(MEASURED))
    metrics.set_card("m", "base", {"quality": {"top1_agreement": 1.0}})  # the base's stand-in
    quality = metrics.variant_quality
    assert quality.labels("m:w4a16", "kl_to_base")._value.get() == 0.049278
    assert quality.labels("m:w4a16", "last_word_accuracy")._value.get() == 0.28
    assert metrics.variant_size.labels("m:w4a16")._value.get() == 118177024
    assert quality.labels("m", "top1_agreement")._value.get() == 1.0
    assert ("m", "perplexity") not in quality._metrics  # unknown figures make no series
