"""Backends for the quality tests: real Backend objects whose engines are marked ready by hand
(nothing polls them) and whose clients point at the discard port (a test that sent anything
would see it fail)."""

from __future__ import annotations

from compress.schema import Card
from server.backends.engine_process import EngineState
from server.backends.registry import Backend, Registry, engine_client
from server.backends.remote_engine import RemoteEngine

BASE = "m"
W8A8 = "m:w8a8"
W4A16 = "m:w4a16"
NOWHERE = "http://127.0.0.1:9"


def backend(name: str, card: dict | None = None, ready: bool = True) -> Backend:
    engine = RemoteEngine(name, NOWHERE)
    if ready:
        engine.state = EngineState.READY
    variant = name.split(":", 1)[1] if ":" in name else None
    card_model = Card.model_validate(card) if card is not None else None
    return Backend(name, engine, engine_client(NOWHERE, 5), card=card_model, variant=variant)


def registry(*backends: Backend) -> Registry:
    reg = Registry(BASE)
    for b in backends:
        reg.add(b)
    return reg
