"""Experiment definitions and states live in the shared experiment store: what two gateway
replicas on one database see of each other's writes, and how configured experiments are
upserted without undoing what was changed through the API."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import create_engine

from server.errors import APIError
from server.experiments.definition_store import DefinitionStore
from server.experiments.definitions import from_settings
from server.settings import ExperimentSettings
from tests.server.experiments.helpers import BASE, W8A8, replica

AB = ExperimentSettings(
    name="ab",
    arms=[{"variant": BASE}, {"variant": W8A8, "weight": 3}],
    guardrails=[{"metric": "error_rate", "margin": 0.05}],
    ramp={"steps": [0.1, 0.5, 1.0], "step_s": 60},
)


def _with(**changes) -> ExperimentSettings:
    return ExperimentSettings(**{**AB.model_dump(), **changes})


def test_definition_round_trip(tmp_path):
    store = DefinitionStore(create_engine(f"sqlite:///{tmp_path / 'x.db'}"))
    experiment = from_settings(AB, "api", 1000.0)
    experiment.arm_stops = {W8A8: {"metric": "error_rate", "reason": "worse", "at": 1001.0}}
    assert store.insert(experiment)
    assert not store.insert(experiment)  # the name is taken
    loaded = store.get("ab")
    assert loaded == experiment
    assert loaded.arms == [
        {"name": BASE, "variant": BASE, "weight": 1.0},
        {"name": W8A8, "variant": W8A8, "weight": 3.0},
    ]
    assert loaded.guardrails == [{"metric": "error_rate", "margin": 0.05}]
    assert loaded.ramp == {"steps": [0.1, 0.5, 1.0], "step_s": 60.0}
    assert (loaded.state, loaded.running_since, loaded.version) == ("running", 1000.0, 1)
    assert store.get("nope") is None


async def test_created_on_one_replica_seen_by_the_other(replicas):
    a, b = replicas
    created = await a.create(AB)
    assert a.get("ab") == created  # the writer refreshed at once
    assert b.assign("user-1") is None  # routing reads only b's copy, not the database
    await b.refresh()
    assert b.get("ab").version == 1
    assert b.assign("user-1")[0] == "ab"
    with pytest.raises(APIError) as exists:
        await b.create(AB)
    assert (exists.value.status, exists.value.code) == (409, "exists")


async def test_pause_on_one_replica_pauses_the_other(replicas):
    a, b = replicas
    await a.create(AB)
    await b.refresh()
    paused = await b.set_state("ab", "pause")
    assert (paused.state, paused.version, paused.state_reason) == (
        "paused",
        2,
        "pause through the API",
    )
    assert a.get("ab").state == "running"  # until a refreshes
    await a.refresh()
    assert a.get("ab").state == "paused" and a.get("ab").version == 2
    assert a.assign("user-1") is None
    await a.set_state("ab", "resume")
    await b.refresh()
    assert b.get("ab").state == "running" and b.get("ab").version == 3


async def test_stopped_is_checked_against_the_store_not_a_stale_copy(replicas):
    a, b = replicas
    await a.create(AB)
    await b.refresh()
    await b.set_state("ab", "stop")
    assert a.get("ab").state == "running"  # stale copy
    with pytest.raises(APIError) as stopped:
        await a.set_state("ab", "resume")
    assert (stopped.value.status, stopped.value.code) == (409, "stopped")
    with pytest.raises(APIError) as missing:
        await a.set_state("nope", "pause")
    assert (missing.value.status, missing.value.code) == (404, "not_found")


async def test_background_refresh_picks_up_other_replicas_writes(tmp_path):
    db = tmp_path / "shared.db"
    writer, reader = replica(db), replica(db, refresh_s=0.1)
    await writer.start()
    await reader.start()
    try:
        await writer.create(AB)
        await writer.set_state("ab", "pause")
        deadline = time.monotonic() + 5
        while "ab" not in reader.experiments or reader.get("ab").state != "paused":
            assert time.monotonic() < deadline, "the reader never saw the writer's changes"
            await asyncio.sleep(0.05)
        # Series for an experiment another replica created exist here too.
        value = reader.metrics.registry.get_sample_value(
            "leanserve_experiment_assignments_total", {"experiment": "ab", "arm": W8A8}
        )
        assert value == 0
    finally:
        await writer.stop()
        await reader.stop()


async def test_config_upsert_keeps_a_state_set_through_the_api(tmp_path):
    db = tmp_path / "shared.db"
    first = replica(db, [AB])
    await first.start()
    assert first.get("ab").state_by == "config"
    await first.set_state("ab", "pause")
    await first.stop()

    # A restart with a changed definition: the definition follows the config, the state the API.
    changed = _with(guardrails=[{"metric": "latency", "margin": 0.2}])
    second = replica(db, [changed])
    await second.start()
    stored = second.get("ab")
    assert (stored.state, stored.state_by) == ("paused", "api")
    assert stored.guardrails == [{"metric": "latency", "margin": 0.2}]
    await second.stop()


async def test_config_state_follows_the_config_until_the_api_sets_it(tmp_path):
    db = tmp_path / "shared.db"
    first = replica(db, [AB])
    await first.start()
    version = first.get("ab").version
    await first.stop()

    same = replica(db, [AB])  # the same config again: nothing to write
    await same.start()
    assert same.get("ab").version == version
    await same.stop()

    paused = replica(db, [_with(state="paused")])
    await paused.start()
    assert paused.get("ab").state == "paused"
    await paused.stop()


async def test_replicas_starting_together_upsert_once(tmp_path):
    db = tmp_path / "shared.db"
    replicas = [replica(db, [AB]) for _ in range(4)]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        assert {r.get("ab").version for r in replicas} == {1}
    finally:
        for r in replicas:
            await r.stop()


async def test_a_late_stale_load_does_not_undo_a_write(replicas):
    """The periodic reload may have read the store just before this gateway's own write and
    finish after it: the copy keeps the newer version."""
    a, _ = replicas
    await a.create(AB)
    stale = await asyncio.to_thread(a.definitions.load)
    await a.set_state("ab", "pause")
    a._install(stale)
    assert a.get("ab").state == "paused"
