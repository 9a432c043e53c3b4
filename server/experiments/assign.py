"""Sticky arm assignment: a hash of (experiment, user), so every gateway replica agrees without
talking to the others. Requests without a user id get a random arm."""

from __future__ import annotations

import hashlib
import random


def bucket(experiment: str, user: str) -> float:
    """A number in [0, 1) fixed by experiment and user, uniform over users."""
    digest = hashlib.sha256(f"{experiment}\x00{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_arm(arms: list[tuple[str, float]], point: float) -> str:
    """The arm whose slice of [0, 1), sized by its weight, holds `point`."""
    total = sum(weight for _, weight in arms)
    edge = 0.0
    for name, weight in arms:
        edge += weight / total
        if point < edge:
            return name
    return arms[-1][0]


def assign(experiment: str, arms: list[tuple[str, float]], user: str | None) -> str:
    point = bucket(experiment, user) if user else random.random()
    return choose_arm(arms, point)
