"""The host layer: reachable with the pinned key, a complete fact report, a supported OS, sshd
refusing passwords and root logins with passwords, and the time daemon running and synchronised."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.plan.checks import TIME_SYNC_UNIT, reachable_expectation, time_sync_expectation
from components.plan.host_os import SUPPORTED_OS
from components.verification.layers.facts import Context
from components.verification.results import Finding, skipped, verdict

LAYER = "host"
# The sections each check reads: what the evidence report records beside a verdict.
SOURCES: dict[str, tuple[str, ...]] = {
    "os": ("os", "kernel"),
    "ssh-password-login": ("sshd",),
    "ssh-root-login": ("sshd",),
    "time-sync": ("time_sync",),
}
# sshd -T prints PermitRootLogin's deprecated spelling as written; both mean the same setting.
ROOT_LOGIN_SYNONYMS = {"without-password": "prohibit-password"}
ROOT_LOGIN_ALLOWED = ("prohibit-password", "no")


# chronyc's leap status while it follows a source; "Not synchronised" otherwise.
SYNCHRONISED_LEAP_STATUS = ("Normal", "Insert second", "Delete second")
# chronyc's reference ids that name no NTP server: none selected, or chrony's own clock (the
# ``local`` directive) standing in for one.
NO_SERVER_REFERENCE_IDS = {"00000000": "no source", "7F7F0101": "its own clock (local)"}


@dataclass(frozen=True)
class TimeSync:
    """What the ``time_sync`` section reported: each time daemon's unit properties, chrony's
    tracking report, and the lines that were neither (the queries' own complaints)."""

    units: dict[str, dict[str, str]] = field(default_factory=dict)
    tracking: dict[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def unit(self, name: str) -> dict[str, str]:
        return self.units.get(f"{name}.service", {})

    @property
    def reference(self) -> str:
        """The reference chrony follows, ``7F000001 (127.0.0.1)`` (``""`` when not reported)."""
        return self.tracking.get("Reference ID", "")

    @property
    def synchronised(self) -> bool:
        reference_id = self.reference.split(" ", 1)[0]
        return (
            self.tracking.get("Leap status") in SYNCHRONISED_LEAP_STATUS
            and bool(reference_id)
            and reference_id not in NO_SERVER_REFERENCE_IDS
        )


def parse_time_sync(text: str) -> TimeSync:
    """The ``time_sync`` section: ``unit <name>`` blocks of systemctl's ``Key=value`` lines, then
    ``tracking`` and chronyc's ``Key : value`` lines (pure)."""
    units: dict[str, dict[str, str]] = {}
    tracking: dict[str, str] = {}
    errors: list[str] = []
    block: dict[str, str] | None = None
    in_tracking = False
    for line in text.splitlines():
        if line.startswith("unit "):
            block, in_tracking = units.setdefault(line[5:].strip(), {}), False
        elif line == "tracking":
            block, in_tracking = None, True
        elif in_tracking and " : " in line:
            key, value = line.split(":", 1)
            tracking[key.strip()] = value.strip()
        elif block is not None and "=" in line:
            key, value = line.split("=", 1)
            block[key] = value
        elif line.strip():
            errors.append(line.strip())
    return TimeSync(units, tracking, tuple(errors))


def _time_sync_check(ctx: Context) -> Finding:
    """The time daemon host setup enables is running, stays enabled across boots, follows an NTP
    server, and no second daemon steers the clock beside it."""
    name = ctx.host.name
    if "time_sync" not in ctx.facts.sections:
        return skipped(LAYER, name, "time-sync", "no time daemon report in the collected facts")
    report = parse_time_sync(ctx.facts.get("time_sync"))
    unit = report.unit(TIME_SYNC_UNIT)
    active = unit.get("ActiveState") == "active"
    enabled = unit.get("UnitFileState") == "enabled"
    others = sorted(
        u.removesuffix(".service")
        for u, props in report.units.items()
        if u != f"{TIME_SYNC_UNIT}.service" and props.get("ActiveState") == "active"
    )
    state = (
        f"{TIME_SYNC_UNIT} {unit.get('ActiveState') or 'unknown'}, "
        f"{unit.get('UnitFileState') or 'not installed'}"
    )
    if report.synchronised:
        stratum = report.tracking.get("Stratum", "?")
        offset = report.tracking.get("System time", "offset unknown")
        sync = f"synchronised to {report.reference} (stratum {stratum}, {offset})"
    elif report.tracking:
        leap = report.tracking.get("Leap status", "unknown")
        reference_id = report.reference.split(" ", 1)[0]
        following = NO_SERVER_REFERENCE_IDS.get(reference_id, report.reference or "nothing")
        sync = f"not synchronised (leap status {leap}, following {following})"
    else:
        sync = "no tracking report" + (f": {report.errors[-1]}" if report.errors else "")
    observed = f"{state}, {sync}"
    if others:
        observed += f"; also active: {', '.join(others)}"
    return verdict(
        LAYER,
        name,
        "time-sync",
        active
        and enabled
        and not others
        and (report.synchronised or not ctx.config.verification.time_sync_required),
        observed,
        time_sync_expectation(ctx.config),
        units=report.units,
        tracking=report.tracking,
        errors=list(report.errors),
    )


def parse_sshd(text: str) -> dict[str, str]:
    """``sshd -T`` lines as ``{keyword: value}``, PermitRootLogin's synonyms made one (pure)."""
    settings = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    root = settings.get("permitrootlogin")
    if root is not None:
        settings["permitrootlogin"] = ROOT_LOGIN_SYNONYMS.get(root, root)
    return settings


def reached(ctx: Context) -> Finding:
    """A report came back over SSH, so the host presented its pinned key."""
    host = ctx.host
    return verdict(
        LAYER,
        host.name,
        "reachable",
        True,
        reachable_expectation(host),
        reachable_expectation(host),
        address=host.address,
        port=host.ssh.port,
        host_key=host.ssh.host_key,
    )


def judge(ctx: Context) -> list[Finding]:
    name, facts = ctx.host.name, ctx.facts
    os_id = facts.get("os")
    sshd = parse_sshd(facts.get("sshd"))
    passwords = sshd.get("passwordauthentication", "?")
    interactive = sshd.get("kbdinteractiveauthentication", "?")
    return [
        verdict(
            LAYER, name, "os", os_id in SUPPORTED_OS, os_id or "unknown", " or ".join(SUPPORTED_OS)
        ),
        verdict(
            LAYER,
            name,
            "ssh-password-login",
            {passwords, interactive} == {"no"},
            f"password {passwords}, keyboard-interactive {interactive}",
            "both off",
            sshd=dict(sorted(sshd.items())),
        ),
        verdict(
            LAYER,
            name,
            "ssh-root-login",
            sshd.get("permitrootlogin") in ROOT_LOGIN_ALLOWED,
            sshd.get("permitrootlogin", "?"),
            " or ".join(ROOT_LOGIN_ALLOWED),
        ),
        _time_sync_check(ctx),
    ]
