"""HTTP API of the gateway (FastAPI)."""

from gateway.http.app import create_app
from gateway.http.deps import Services

__all__ = ["Services", "create_app"]
