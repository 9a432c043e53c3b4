"""Experiment definitions and states in the experiment store, the database the outcomes go to,
so every gateway replica sees the same experiments.

Writes are small transactions read-modify-write on one row; between replicas the last write
wins and `version` counts the writes. These functions block: callers run them off the event
loop (asyncio.to_thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Column, Engine, Float, Integer, String, Table, Text, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from server.experiments.definitions import Experiment, from_row, to_row
from server.experiments.store import metadata

log = logging.getLogger("leanserve.experiments")

experiments = Table(
    "experiments",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("arms", Text, nullable=False),
    Column("control", String(200), nullable=False),
    Column("guardrails", Text, nullable=False),
    Column("ramp", Text),
    Column("state", String(16), nullable=False),
    Column("state_reason", Text),
    Column("state_by", String(16), nullable=False),
    Column("arm_stops", Text, nullable=False),
    Column("run_s", Float, nullable=False),
    Column("running_since", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("version", Integer, nullable=False),
)

ATTEMPTS = 3  # SQLite answers "busy" at once to one of two transactions that both write


class DefinitionStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        experiments.create(engine, checkfirst=True)

    def load(self) -> list[Experiment]:
        """Every experiment, oldest first (the first running one is the one routed by)."""
        query = select(experiments).order_by(experiments.c.created_at, experiments.c.name)
        with self.engine.connect() as conn:
            return [from_row(dict(r._mapping)) for r in conn.execute(query)]

    def get(self, name: str) -> Experiment | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(experiments).where(experiments.c.name == name)).first()
        return from_row(dict(row._mapping)) if row else None

    def insert(self, experiment: Experiment) -> bool:
        """False when an experiment of that name exists."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(experiments).values(**to_row(experiment)))
        except IntegrityError:
            return False
        return True

    def change(
        self, name: str, edit: Callable[[Experiment], Experiment | None]
    ) -> Experiment | None:
        """Apply `edit` to the stored experiment and write what it returns (None: no write).
        Returns the experiment as stored afterwards, None when there is none of that name.
        Exceptions from `edit` (a refused change) come through with nothing written."""
        for attempt in range(ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    row = conn.execute(
                        select(experiments).where(experiments.c.name == name)
                    ).first()
                    if row is None:
                        return None
                    current = from_row(dict(row._mapping))
                    edited = edit(current)
                    if edited is None:
                        return current
                    values = to_row(edited)
                    for key in ("name", "created_at", "version"):
                        values.pop(key)
                    values["updated_at"] = time.time()
                    conn.execute(
                        update(experiments)
                        .where(experiments.c.name == name)
                        .values(**values, version=experiments.c.version + 1)
                    )
                    edited.updated_at, edited.version = values["updated_at"], current.version + 1
                    return edited
            except OperationalError:
                if attempt == ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        return None

    def upsert_configured(self, configured: Experiment) -> None:
        """A configured experiment: inserted when new; else its definition follows the config,
        and its state too unless the state was last set through the API."""
        if self.insert(configured):
            log.info("experiment %s: added from the configuration", configured.name)
            return

        def edit(stored: Experiment) -> Experiment | None:
            result = stored
            if stored.definition() != configured.definition():
                result = _with_definition(stored, configured)
            if stored.state_by == "config" and stored.state != configured.state:
                result = result.with_state(configured.state, None, "config", time.time())
            return None if result is stored else result

        self.change(configured.name, edit)


def _with_definition(stored: Experiment, configured: Experiment) -> Experiment:
    # Stops of arms the configuration no longer has go with them.
    names = set(configured.arm_names)
    stops = {arm: stop for arm, stop in stored.arm_stops.items() if arm in names}
    return Experiment(**{**vars(stored), **configured.definition(), "arm_stops": stops})
