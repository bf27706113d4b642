"""The gateway's default ports, one home for the numbers the inference stack also uses."""

from __future__ import annotations

from typing import Final

PUBLIC_PORT: Final = 8080
"""The OpenAI-compatible HTTP listener (``/v1/*``, ``/healthz``, ``/readyz``)."""

SCALER_GRPC_PORT: Final = 9090
"""KEDA's external-push scaler (gRPC); peers also read each other's counts here."""

ADMIN_HTTP_PORT: Final = 9091
"""The admin HTTP listener: ``/metrics``, ``/usage``, ``/healthz``, ``/readyz``."""
