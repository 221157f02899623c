"""``gateway detect-score``: the stored alerts against a ground-truth file, per kind."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import psycopg

from gateway.detection.score import Labelled, ScoreError, parse_truth, render, score
from gateway.errors import StorageError

__all__ = ["detect_score", "load_alerts"]


def load_alerts(conninfo: str) -> list[Labelled]:
    """Every current (not withdrawn) alert, from the ``alerts`` view."""
    try:
        with psycopg.connect(conninfo) as conn:
            rows = conn.execute('SELECT meter_id, kind, start, "end" FROM alerts').fetchall()
    except psycopg.Error as exc:
        raise StorageError(f"cannot read alerts: {exc}") from exc
    return [Labelled(r[0], r[1], r[2], r[3]) for r in rows]


def detect_score(
    conninfo: str, truth: Path, *, since: datetime | None = None, as_json: bool = False
) -> int:
    try:
        lines = truth.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ScoreError(f"cannot read {truth}: {exc.strerror}") from exc
    scores = score(parse_truth(lines), load_alerts(conninfo), since=since)
    if as_json:
        for s in scores:
            print(
                json.dumps(
                    {
                        "kind": s.kind,
                        "tp": s.true_positives,
                        "fp": s.false_positives,
                        "fn": s.false_negatives,
                        "precision": round(s.precision, 4),
                        "recall": round(s.recall, 4),
                    }
                )
            )
    else:
        print(render(scores))
    return 0
