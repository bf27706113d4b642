"""``sovereign-gateway``: parse settings, set up logging, run the gateway until SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from sovereign_gateway.logs import configure_logging
from sovereign_gateway.service import serve
from sovereign_gateway.settings import SettingsError, parse_settings


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
    except SettingsError as error:
        print(f"sovereign-gateway: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.records)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
