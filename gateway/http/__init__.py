"""HTTP API of the gateway (FastAPI)."""

from gateway.http.app import Services, create_app

__all__ = ["Services", "create_app"]
