"""Judging meters off the ingest event loop: the pure rules run in a worker process.

The detection loop shares its process (and its one event loop) with ingest, whose per-message
Python work is what bounds throughput. The rules are pure and their inputs are plain values, so
the loop loads rows, hands them to :func:`judge` in a worker process started at lower CPU
priority (the operating system then serves ingest and the database first, and detection takes
what is left; alert lag, not ingest, absorbs a busy machine), and writes the plans it gets back.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.detection.model import MeterProfile, Rules
from gateway.detection.reconcile import Plan, StoredAlert, reconcile
from gateway.detection.rules import evaluate
from gateway.detection.store import RawData

__all__ = ["Job", "judge", "lower_priority"]

NICENESS = 10


@dataclass(frozen=True, slots=True)
class Job:
    profile: MeterProfile
    raw: RawData
    stored: Sequence[StoredAlert]
    judged_from: datetime


def judge(jobs: Sequence[Job], rules: Rules, now: datetime) -> list[tuple[str, Plan]]:
    """Per meter, the transitions that bring its stored alerts in line with its data."""
    plans: list[tuple[str, Plan]] = []
    for job in jobs:
        episodes = evaluate(
            job.profile,
            job.raw.meter_data(),
            rules,
            now=now,
            resolutions=job.raw.resolutions,
        )
        plan = reconcile(job.stored, episodes, since=job.judged_from)
        if not plan.empty:
            plans.append((job.profile.meter_id, plan))
    return plans


def lower_priority() -> None:
    """Worker initializer: yield the CPU to ingest and the database, and leave Ctrl-C to the
    gateway (which shuts the worker down itself) instead of dying with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICENESS)
