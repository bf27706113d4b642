"""The HTTP surface: the public and admin listeners' routes, and every answer that is not a
routed request (probes, the model list, metrics, usage, unknown paths)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sovereign_gateway.admin_token import AdminToken
from sovereign_gateway.admission import authenticate, unauthorized
from sovereign_gateway.connections import shed_past_connection_limit
from sovereign_gateway.errors import SERVER_HEADER, echoed, error_response
from sovereign_gateway.logs import iso_time
from sovereign_gateway.serving_state import ServingState

ROUTED_PATHS: Final = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _hide_server_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


class HttpSurface:
    """The two listeners' applications. ``routed`` answers the inference paths."""

    def __init__(
        self, state: ServingState, routed: _Handler, admin_token: AdminToken | None
    ) -> None:
        self._state = state
        self._routed = routed
        self._admin_token = admin_token

    def public_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._state.settings.max_body_bytes,
            middlewares=[shed_past_connection_limit],
        )
        app.on_response_prepare.append(_hide_server_version)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/models", self._list_models)
        for path in ROUTED_PATHS:
            app.router.add_post(path, self._routed)
        app.router.add_route("*", "/{tail:.*}", self._unknown_path)
        return app

    def admin_app(self) -> web.Application:
        # the same answers as the public listener's: OpenAI's error shape, no server version
        app = web.Application(middlewares=[shed_past_connection_limit])
        app.on_response_prepare.append(_hide_server_version)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/usage", self._usage)
        app.router.add_route("*", "/{tail:.*}", self._unknown_path)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._state.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready", "models": len(self._state.routes.models)})

    def _admin_refusal(self, request: web.Request) -> web.Response | None:
        """A 401 when ``--admin-token-file`` is set and the request does not carry its token."""
        if self._admin_token is None or self._admin_token.admits(
            request.headers.get("Authorization")
        ):
            return None
        present = bool(request.headers.get("Authorization"))
        message = (
            "Incorrect admin token provided."
            if present
            else "You didn't provide the admin token. Send it as 'Authorization: Bearer TOKEN'."
        )
        return error_response(401, message, "invalid_request_error", "invalid_admin_token")

    async def _metrics(self, request: web.Request) -> web.Response:
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        for readiness in self._state.models.values():
            readiness.accrue()
        return web.Response(
            body=generate_latest(self._state.metering.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _usage(self, request: web.Request) -> web.Response:
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        for readiness in self._state.models.values():
            readiness.accrue()
        document = self._state.metering.usage([route.name for route in self._state.routes.models])
        document["since"] = iso_time(document["since"])
        return web.json_response(document)

    async def _unknown_path(self, request: web.Request) -> web.Response:
        return error_response(
            404,
            f"Invalid URL ({echoed(request.method)} {echoed(request.path)})",
            "invalid_request_error",
            "unknown_url",
        )

    async def _list_models(self, request: web.Request) -> web.Response:
        if authenticate(self._state, request) is None:
            return unauthorized(request)
        created = int(self._state.metering.started_wall)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": route.name,
                        "object": "model",
                        "created": created,
                        "owned_by": "sovereign",
                    }
                    for route in self._state.routes.models
                ],
            }
        )
