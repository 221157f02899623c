"""What HTTP handlers are given: the service's resources, injected with ``Depends``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from gateway.ingest.intake import MessageIntake
from gateway.ingest.pipeline import IngestPipeline
from gateway.metrics import Metrics
from gateway.mqtt import MqttClient

__all__ = ["Services", "ServicesDep", "get_services"]


@dataclass(frozen=True, slots=True)
class Services:
    pool: AsyncConnectionPool
    mqtt: MqttClient
    """The broker session: ``connected``/``subscribed`` for readiness, ``publish`` (QoS 1,
    returns once the broker acknowledged) for commands and keypad tokens."""
    intake: MessageIntake
    pipeline: IngestPipeline
    metrics: Metrics
    ingesting: bool = True
    """This process takes telemetry from the broker (``GATEWAY_PARTS`` has ``ingest``)."""


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _services(request: Request) -> Services:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hand-off
    # per request for a dictionary lookup.
    return get_services(request)


ServicesDep = Annotated[Services, Depends(_services)]
