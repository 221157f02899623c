"""``firmware-sim run`` as a user runs it: where its output goes and what it logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

from firmware_sim.fleet import Progress

BIN = Path(sys.executable).parent


def test_progress_counts_messages_and_rates() -> None:
    progress = Progress(started=100.0)
    assert progress.report(500, 110.0) == (500, 50.0, 50.0)
    assert progress.report(800, 112.0) == (300, 150.0, 800 / 12)
    assert progress.report(800, 112.0) == (0, 0.0, 800 / 12)


def test_run_reports_progress_and_keeps_its_ground_truth_under_its_data_dir(
    tmp_path: Path, mqtt_url: str, topic_prefix: str
) -> None:
    seed = str(60 + uuid.uuid4().int % 9)
    result = subprocess.run(
        [
            str(BIN / "firmware-sim"), "run", "--meters", "30", "--seed", seed,
            "--broker", mqtt_url, "--prefix", topic_prefix, "--speed", "3600",
            "--duration", "4", "--progress-every", "1", "--session-expiry", "60",
            "--data-dir", "sim-out", "--manifest", "meters.jsonl",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sim-out" / "ground-truth.jsonl").exists()
    assert not (tmp_path / "ground-truth.jsonl").exists()
    manifest = (tmp_path / "meters.jsonl").read_text().splitlines()
    assert len({json.loads(line)["meter_id"] for line in manifest}) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meters.jsonl", "sim-out"]
    progress = re.findall(
        r"sent (\d+) MQTT messages \(\+\d+, \d+/s\); (\d+)/(\d+) links", result.stderr
    )
    assert len(progress) >= 2, result.stderr
    counts = [int(sent) for sent, _, _ in progress]
    assert counts == sorted(counts) and counts[-1] > 0
    assert all(total == "30" for _, _, total in progress)  # one link per meter up to 100
    # A summary, not a line per link, at the default level.
    assert "link meter-" not in result.stderr
    assert re.search(
        r"stopped: 30 meters, \d+ MQTT messages sent in \d+ s \(\d+/s\)", result.stdout
    )
