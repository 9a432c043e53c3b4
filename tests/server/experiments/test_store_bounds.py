"""The outcome store against a real SQLite database (issue 12, items 10 and 13): a row the
database refuses does not block the rows after it, a database that is away loses nothing, and
feedback for requests never recorded does not pile up."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import func, select

from server.experiments.store import OutcomeStore, feedback
from server.metrics.registry import Metrics


def _row(request_id: str, arm: str = "a") -> dict:
    return {
        "request_id": request_id,
        "experiment": "e",
        "arm": arm,
        "variant": "m",
        "user_hash": None,
        "latency_s": 0.1,
        "ttft_s": 0.05,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "finish_reason": "stop",
        "error": None,
    }


def _ids(store: OutcomeStore) -> set[str]:
    return {r["request_id"] for r in store.rows("e")}


def _feedback_ids(store: OutcomeStore) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(select(feedback.c.request_id)).scalars())


async def test_a_row_the_database_refuses_is_dropped_and_counted(tmp_path):
    store = OutcomeStore(f"sqlite:///{tmp_path / 'x.db'}")
    metrics = Metrics()
    store.on_reject = metrics.experiment_outcomes_rejected.inc
    # SQLite does not enforce VARCHAR lengths; PostgreSQL refuses a longer value (DataError).
    # This trigger makes SQLite refuse an over-long arm the same way.
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER arm_length BEFORE INSERT ON outcomes WHEN length(NEW.arm) > 200 "
            "BEGIN SELECT RAISE(ABORT, 'value too long for type character varying(200)'); END"
        )
    store.start()
    try:
        store.add(_row("r1"))
        store.add(_row("r2", arm="x" * 300))
        store.add(_row("r3"))
        assert await store.flush(timeout_s=10), "the refused row blocks the queue"
        store.add(_row("r4"))  # and what comes later is written too
        assert await store.flush(timeout_s=10)
        assert _ids(store) == {"r1", "r3", "r4"}
        assert store.rejected == 1
        assert metrics.registry.get_sample_value("leanserve_experiment_outcomes_rejected_total")
    finally:
        await store.stop()


async def test_a_database_that_is_away_loses_nothing(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    store = OutcomeStore(f"sqlite:///{folder / 'x.db'}")
    store.engine.dispose()
    folder.rename(tmp_path / "away")  # every connection now fails: "unable to open database"
    store.start()
    try:
        for i in range(5):
            store.add(_row(f"r{i}"))
        await asyncio.sleep(1.0)  # several failed attempts, the row-by-row fallback included
        assert store.rejected == 0 and len(store.pending) == 5
        (tmp_path / "away").rename(folder)
        assert await store.flush(timeout_s=15)
        assert _ids(store) == {f"r{i}" for i in range(5)}
    finally:
        await store.stop()


def test_unattached_feedback_expires_and_attached_feedback_stays(tmp_path):
    store = OutcomeStore(f"sqlite:///{tmp_path / 'x.db'}")
    store._insert([{**_row("served"), "created_at": time.time()}])
    store.set_feedback("served", 1.0)
    store.set_feedback("never-served", 2.0)
    assert store.prune_feedback() == 0  # young rows stay: their outcome may be on its way
    assert store.prune_feedback(now=time.time() + store.feedback_ttl_s + 1) == 1
    assert _feedback_ids(store) == {"served"}


def test_unattached_feedback_is_capped_oldest_first(tmp_path):
    store = OutcomeStore(f"sqlite:///{tmp_path / 'x.db'}")
    store.feedback_max_unattached = 3
    store._insert([{**_row("served"), "created_at": time.time()}])
    store.set_feedback("served", 1.0)
    for i in range(6):
        store.set_feedback(f"orphan-{i}", 0.0)
        time.sleep(0.01)  # distinct created_at
    assert store.prune_feedback() == 3
    assert _feedback_ids(store) == {"served", "orphan-3", "orphan-4", "orphan-5"}


async def test_the_writer_prunes_feedback_on_its_own(tmp_path):
    store = OutcomeStore(f"sqlite:///{tmp_path / 'x.db'}")
    store.feedback_ttl_s, store.prune_every_s = 0.0, 0.05
    store.start()
    try:
        await asyncio.to_thread(store.set_feedback, "never-served", 1.0)
        deadline = time.monotonic() + 5
        while _feedback_ids(store) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(feedback)).scalar_one() == 0
    finally:
        await store.stop()
