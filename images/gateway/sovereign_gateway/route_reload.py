"""Route reload: the route table and the API-key file, looked at every ``--reload-interval`` and
swapped in when they changed; a file that does not load keeps the last good one in use."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sovereign_gateway.auth import ApiKeyFileError, ApiKeys, load_api_keys
from sovereign_gateway.routes import RouteTable, RouteTableError, check_reload, load_route_table
from sovereign_gateway.serving_state import ServingState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _FileStamp:
    inode: int
    size: int
    mtime_ns: int


def _stamp(path: Path) -> _FileStamp | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return _FileStamp(stat.st_ino, stat.st_size, stat.st_mtime_ns)


class RouteReload:
    """Follows the route table and key files into ``state``.

    ``add_model`` starts following a model new to the table; ``retire_model`` stops one that
    left it (after ``state.models`` no longer holds it).
    """

    def __init__(
        self,
        state: ServingState,
        add_model: Callable[[str], None],
        retire_model: Callable[[str], None],
    ) -> None:
        self._state = state
        self._add_model = add_model
        self._retire_model = retire_model
        self._stamps: dict[Path, _FileStamp | None] = {}

    def note_files(self) -> None:
        """Take the files as they are now as the ones in use (at start, after loading them)."""
        settings = self._state.settings
        self._stamps = {settings.routes: _stamp(settings.routes)}
        if settings.api_keys is not None:
            self._stamps[settings.api_keys] = _stamp(settings.api_keys)

    async def follow(self) -> None:
        """Look at the files every ``--reload-interval``, forever (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(self._state.settings.reload_interval)
            self.check_files()

    def _changed(self, path: Path) -> bool:
        """Whether ``path`` changed (or appeared, or went away) since the last look."""
        stamp = _stamp(path)
        if stamp == self._stamps.get(path):
            return False
        self._stamps[path] = stamp
        return True

    def check_files(self) -> None:
        """Reload the route table and the key file when they changed; keep the old on error."""
        settings = self._state.settings
        if self._changed(settings.routes):
            problem = ""
            try:
                reloaded = load_route_table(settings.routes)
                check_reload(self._state.routes, reloaded, f"route table {settings.routes}")
                self.apply_routes(reloaded)
            except RouteTableError as error:
                problem = str(error)
            if problem:
                log.error("route table not reloaded, keeping the last good one: %s", problem)
        if settings.api_keys is not None and self._changed(settings.api_keys):
            keys: ApiKeys | None = None
            problem = ""
            try:
                keys = load_api_keys(settings.api_keys)
            except ApiKeyFileError as error:
                problem = str(error)
            if keys is None:
                log.error("api keys not reloaded, keeping the last good ones: %s", problem)
            else:
                self._state.api_keys = keys
                log.info("api keys reloaded", extra={"tenants": len(keys.tenants)})

    def apply_routes(self, routes: RouteTable) -> None:
        """Swap in a new route table. Requests in flight finish on the route they started with;
        requests still held follow the new table (``Admission``)."""
        state = self._state
        old = state.routes
        state.routes = routes
        state.metering.price_per_gpu_hour = routes.metering.price_per_gpu_hour
        state.metering.currency = routes.metering.currency
        for route in routes.models:
            readiness = state.models.get(route.name)
            if readiness is None:
                self._add_model(route.name)
            elif readiness.route != route:
                readiness.update_route(route)
        for route in old.models:
            if routes.model(route.name) is None:
                self._retire_model(route.name)
        log.info("route table reloaded", extra={"models": [route.name for route in routes.models]})
