"""What one host reported, and the script that collects it (pure).

The collector is assembled from one part per layer (``<layer>.sh`` beside that layer's module),
after :file:`preamble.sh` and before the closing ``end`` section; each part prints
``==== <section>`` headers, which :func:`parse_sections` splits again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from components.config.models import HostSpec, StackConfig
from components.plan.checks import LAYERS
from components.verification.geoip import GeoIpDatabase

SCRIPT_DIR = Path(__file__).parent
# The section printed last: a report without it was cut short.
END_SECTION = "end"


def collector_script() -> str:
    """The script a host runs: the preamble, every layer's part in layer order, the end mark.

    Every part runs whichever layers are judged: the parts are cheap, and one collected report
    can then be judged again for any layer."""
    parts = [(SCRIPT_DIR / "preamble.sh").read_text()]
    parts += [(SCRIPT_DIR / f"{layer}.sh").read_text() for layer in LAYERS]
    parts.append(f"section {END_SECTION}\n")
    return "\n".join(parts)


def parse_sections(output: str) -> dict[str, str]:
    """Split the collector's output into its ``==== name`` sections."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("==== "):
            current = sections.setdefault(line[5:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


@dataclass(frozen=True)
class HostFacts:
    host: str
    sections: dict[str, str]

    def get(self, name: str) -> str:
        return self.sections.get(name, "")

    @property
    def complete(self) -> bool:
        return END_SECTION in self.sections


@dataclass(frozen=True)
class Context:
    """Everything a layer judges one host by: the stack, the host as declared, what the host
    reported, the geolocation database (None when there is none), and the time its age is
    judged at (None: now)."""

    config: StackConfig
    host: HostSpec
    facts: HostFacts
    geoip: GeoIpDatabase | None
    now: dt.datetime | None = None
