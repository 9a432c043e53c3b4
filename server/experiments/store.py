"""Experiment outcomes and feedback in a SQL database: SQLite by default, any SQLAlchemy URL
(PostgreSQL for several gateways) by configuration.

Writes go through a small queue drained by one background task, so a slow or locked database
delays the records, never the responses; a write that fails is retried with backoff, and the
queue is bounded so a database that stays down costs memory only up to a limit (then the oldest
records are dropped, counted and logged). A batch the database refuses for what it holds (a value
too long for its column, a constraint) is written row by row: the rows it refuses are dropped,
counted and logged, so one bad record cannot block every later one. The same writer deletes,
now and then, feedback that never found its request (expired, or beyond a cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    exists,
    func,
    insert,
    select,
)
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger("leanserve.experiments")

metadata = MetaData()
outcomes = Table(
    "outcomes",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("experiment", String(64), index=True, nullable=False),
    Column("arm", String(200), nullable=False),
    Column("variant", String(200), nullable=False),
    Column("user_hash", String(64)),
    Column("latency_s", Float),
    Column("ttft_s", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("finish_reason", String(32)),
    Column("error", String(64)),
    Column("created_at", Float, nullable=False),
)
# Feedback lives apart and is joined at report time: with several gateway replicas, a user's
# feedback may reach a replica before the replica that served the request has written its
# outcome (writes are queued), so it cannot wait for that row to exist.
feedback = Table(
    "feedback",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("score", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)


class OutcomeStore:
    def __init__(self, url: str, max_pending: int = 100_000):
        connect_args = {"timeout": 5} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, connect_args=connect_args)
        metadata.create_all(self.engine)
        self.pending: deque[dict] = deque(maxlen=max_pending)
        self.dropped = 0
        self.write_failures = 0
        self.rejected = 0  # records the database refused, dropped
        self.on_reject: Callable[[], None] | None = None  # e.g. a Prometheus counter's inc
        self.feedback_ttl_s = 86_400.0  # unattached feedback older than this is deleted
        self.feedback_max_unattached = 100_000
        self.prune_every_s = 60.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="outcome-writer")

    async def stop(self) -> None:
        await self.flush(timeout_s=5)
        if self._task:
            self._task.cancel()
            # Bounded: a cancel that lands as a wait completes can be lost (Python 3.11's
            # wait_for), and shutdown must not hang on the writer.
            done, _ = await asyncio.wait({self._task}, timeout=5)
            if not done:
                log.error("outcome writer did not stop in 5 s; leaving it")
        self.engine.dispose()

    def add(self, row: dict) -> None:
        if len(self.pending) == self.pending.maxlen:
            self.dropped += 1
            log.error("outcome queue full: dropping the oldest record (%d so far)", self.dropped)
        self.pending.append({**row, "created_at": time.time()})
        self._wake.set()

    async def flush(self, timeout_s: float = 30) -> bool:
        """Wait until every queued record is written; False if that did not happen in time."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)
        return not self.pending

    async def _drain(self) -> None:
        backoff, failures = 0.1, 0
        pruned_at = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.prune_every_s):  # wait_for can eat a cancel
                    await self._wake.wait()
            self._wake.clear()
            if time.monotonic() - pruned_at >= self.prune_every_s:
                pruned_at = time.monotonic()
                await self._prune_quietly()
            while self.pending:
                batch = list(itertools.islice(self.pending, 500))
                try:
                    await asyncio.to_thread(self._insert, batch)
                    done = len(batch)
                except Exception as exc:
                    self.write_failures += 1
                    failures += 1
                    if _connectivity(exc) and failures < 3:
                        log.warning("writing %d outcomes failed (%s); retrying", len(batch), exc)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                    # Refused for what it holds, or failing again and again: row by row, so
                    # only the rows the database refuses are lost.
                    done, stopped = await asyncio.to_thread(self._insert_rows, batch)
                    if stopped is not None:
                        log.warning("writing outcomes failed (%s); retrying", _short(stopped))
                        for _ in range(done):
                            self.pending.popleft()
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                backoff, failures = 0.1, 0
                for _ in range(done):
                    self.pending.popleft()

    def _insert(self, rows: list[dict]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(outcomes).prefix_with("OR IGNORE", dialect="sqlite"), rows)

    def _insert_rows(self, rows: list[dict]) -> tuple[int, Exception | None]:
        """Insert one row at a time; drop the rows the database refuses. Returns how many rows
        were dealt with, and the connectivity error that stopped it early (None if none did)."""
        for done, row in enumerate(rows):
            try:
                self._insert([row])
            except Exception as exc:
                if _connectivity(exc):
                    return done, exc
                self.rejected += 1
                if self.on_reject is not None:
                    self.on_reject()
                log.error(
                    "the database refused the outcome of request %s (%s); dropped (%d so far)",
                    str(row.get("request_id"))[:64],
                    _short(exc),
                    self.rejected,
                )
        return len(rows), None

    async def _prune_quietly(self) -> None:
        try:
            removed = await asyncio.to_thread(self.prune_feedback)
        except Exception as exc:  # the next round tries again
            log.warning("pruning unattached feedback failed: %s", _short(exc))
            return
        if removed:
            log.info("deleted %d feedback rows that match no recorded request", removed)

    def prune_feedback(self, now: float | None = None) -> int:
        """Delete feedback whose request has no recorded outcome: rows older than
        feedback_ttl_s, then the oldest beyond feedback_max_unattached. Returns rows deleted."""
        expired = (time.time() if now is None else now) - self.feedback_ttl_s
        unattached = ~exists().where(outcomes.c.request_id == feedback.c.request_id)
        with self.engine.begin() as conn:
            removed = conn.execute(
                delete(feedback).where(unattached, feedback.c.created_at < expired)
            ).rowcount
            count = conn.execute(select(func.count()).select_from(feedback).where(unattached))
            extra = count.scalar_one() - self.feedback_max_unattached
            if extra > 0:
                oldest = (
                    select(feedback.c.request_id)
                    .where(unattached)
                    .order_by(feedback.c.created_at)
                    .limit(extra)
                    .scalar_subquery()
                )
                removed += conn.execute(
                    delete(feedback).where(feedback.c.request_id.in_(oldest))
                ).rowcount
        return removed

    def set_feedback(self, request_id: str, score: float) -> bool:
        """Record a score for a request (the latest one wins); True when the request's outcome
        is already recorded, False when it is not (yet)."""
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    conn.execute(delete(feedback).where(feedback.c.request_id == request_id))
                    conn.execute(
                        insert(feedback).values(
                            request_id=request_id, score=score, created_at=time.time()
                        )
                    )
                    known = conn.execute(
                        select(outcomes.c.request_id).where(outcomes.c.request_id == request_id)
                    ).first()
                return known is not None
            except OperationalError:
                if attempt == 2:
                    raise
                time.sleep(0.1 * 2**attempt)
        return False

    def rows(self, experiment: str) -> list[dict]:
        """The experiment's outcomes, each with its feedback score (or None)."""
        query = (
            select(*outcomes.c, feedback.c.score.label("feedback"))
            .select_from(
                outcomes.outerjoin(feedback, outcomes.c.request_id == feedback.c.request_id)
            )
            .where(outcomes.c.experiment == experiment)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


def _connectivity(exc: Exception) -> bool:
    """Errors that say nothing about the rows: the database is away, locked or busy."""
    if isinstance(exc, OperationalError | DisconnectionError | PoolTimeout):
        return True
    return bool(getattr(exc, "connection_invalidated", False))


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def outcome_row(outcome) -> dict:
    row = asdict(outcome)
    user = row.pop("user")
    row["user_hash"] = _hash_user(user) if user else None
    return row


def _hash_user(user: str) -> str:
    import hashlib

    # User ids are personal data: keep only a hash, enough to count distinct users.
    return hashlib.sha256(user.encode()).hexdigest()[:32]
