"""What HTTP handlers are given: the service's resources, injected with ``Depends``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from gateway.ingest.pipeline import IngestPipeline
from gateway.metrics import Metrics
from gateway.mqtt import MqttIntake

__all__ = ["Services", "ServicesDep", "get_services"]


@dataclass(frozen=True, slots=True)
class Services:
    pool: AsyncConnectionPool
    intake: MqttIntake
    pipeline: IngestPipeline
    metrics: Metrics


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
