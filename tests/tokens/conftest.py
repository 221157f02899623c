"""Fixtures for the token engine tests: the published STS development vectors (data/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS_PATH = Path(__file__).resolve().parent / "data" / "sts_dev_vectors.json"


def load_vectors() -> dict[str, Any]:
    with VECTORS_PATH.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


VECTORS = load_vectors()
TOKEN_VECTORS: list[dict[str, Any]] = VECTORS["token_vectors"]
COMPONENTS: dict[str, Any] = VECTORS["component_vectors"]


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return VECTORS
