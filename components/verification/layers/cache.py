"""The NVMe cache layer: mounted with noatime, writable by root, persistent by UUID, the array
whole, and reading at least ``cache.minReadMibPerSecond`` with direct I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sovereign_weights.units import MIB

from components.plan.checks import cache_read_expectation, cache_write_expectation
from components.verification.layers.facts import Context
from components.verification.results import Finding, skipped, verdict

# The cache's read probe (collect_facts.sh, section cache_read): at most this many MiB read with
# direct I/O, each dd stopped after CACHE_READ_PROBE_SECONDS; below CACHE_READ_PROBE_MIN_MIB
# moved, the timing says too little to judge.
CACHE_READ_PROBE_MIB = 1024
CACHE_READ_PROBE_MIN_MIB = 64
CACHE_READ_PROBE_SECONDS = 20

# GNU dd's closing statistics under LC_ALL=C: "N bytes (...) copied, S s, R unit/s"; seconds are
# printed with %g, so they may come in exponent form
_DD_COPIED = re.compile(r"^(\d+) bytes\b.* copied, (\d+(?:\.\d+)?(?:e[-+]?\d+)?) s\b", re.MULTILINE)


@dataclass(frozen=True)
class CacheRead:
    """What the cache's read probe reported: its source (``existing``: a file already on the
    cache; ``written``: one written for the probe), what dd read and in how long, dd's complaints,
    and why nothing was measured, if so."""

    source: str
    bytes_read: int
    seconds: float
    errors: tuple[str, ...] = ()
    not_measured: str = ""

    @property
    def measured(self) -> bool:
        enough = self.bytes_read >= CACHE_READ_PROBE_MIN_MIB * MIB
        return not self.not_measured and enough and self.seconds > 0

    @property
    def mib_per_second(self) -> float:
        return self.bytes_read / MIB / self.seconds if self.seconds > 0 else 0.0


SOURCES: dict[str, tuple[str, ...]] = {
    "mounted": ("cache_mount",),
    "noatime": ("cache_mount",),
    "writable": ("cache_writable",),
    "persistent": ("cache_mount", "cache_fstab"),
    "read-speed": ("cache_read",),
    "members": ("mdstat",),
}


def parse_cache_read(text: str) -> CacheRead:
    """The ``cache_read`` section: ``source existing|written``, dd's output (the write's lines
    prefixed ``write``), or ``not-measured <reason>`` (pure)."""
    source, not_measured = "", ""
    errors: list[str] = []
    for line in text.splitlines():
        if line.startswith("source "):
            source = line.split(" ", 1)[1].strip()
        elif line.startswith("not-measured "):
            not_measured = line.split(" ", 1)[1].strip()
        elif line.startswith(("dd: ", "write ", "timeout: ")):
            errors.append(line)
    copied = _DD_COPIED.findall(text)
    bytes_read, seconds = (int(copied[-1][0]), float(copied[-1][1])) if copied else (0, 0.0)
    return CacheRead(source, bytes_read, seconds, tuple(errors), not_measured)


def _cache_read_check(ctx: Context, mounted: bool) -> Finding:
    """The cache reads at least ``cache.minReadMibPerSecond``: what the startup probes and the
    cold-start estimates assume of every node's cache."""
    name, floor = ctx.host.name, ctx.config.cache.min_read_mib_per_second
    expected = cache_read_expectation(ctx.config)
    if "cache_read" not in ctx.facts.sections:
        return skipped("cache", name, "read-speed", "no read measurement in the collected facts")
    if not mounted:
        return skipped("cache", name, "read-speed", "the cache is not mounted")
    read = parse_cache_read(ctx.facts.get("cache_read"))
    if not read.measured:
        reason = (
            read.not_measured
            or "; ".join(read.errors)
            or f"{read.bytes_read / MIB:.0f} MiB read, below the probe's {CACHE_READ_PROBE_MIN_MIB} MiB"
        )
        return verdict("cache", name, "read-speed", False, f"not measured: {reason}", expected)
    what = "a file on the cache" if read.source == "existing" else "a file written for the probe"
    return verdict(
        "cache",
        name,
        "read-speed",
        read.mib_per_second >= floor,
        # whole MiB/s rounded down: a speed just below the floor never reads as the floor
        f"{int(read.mib_per_second)} MiB/s ({read.bytes_read / MIB:.0f} MiB of {what} in "
        f"{read.seconds:.2f} s)",
        expected,
        read_mib_per_second=round(read.mib_per_second, 1),
        bytes_read=read.bytes_read,
        seconds=read.seconds,
        probe_source=read.source,
        min_read_mib_per_second=floor,
    )


@dataclass(frozen=True)
class CacheWrite:
    """What the cache's write probe reported: whether the file was created and removed, and the
    error of the step that failed (``""`` when it did not run or succeeded)."""

    created: bool
    removed: bool
    error: str = ""


def parse_cache_write(text: str) -> CacheWrite:
    """The ``cache_writable`` section: ``create ok|<error>``, then ``remove ok|<error>`` (pure)."""
    steps = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    create, remove = steps.get("create", ""), steps.get("remove", "")
    error = next((e for e in (create, remove) if e and e != "ok"), "")
    return CacheWrite(create == "ok", remove == "ok", error)


def _cache_write_check(ctx: Context, mounted: bool) -> Finding:
    """Root creates and removes a file under the cache: a cache remounted read-only after an
    error, or one whose permissions changed, takes no new weights."""
    name = ctx.host.name
    if "cache_writable" not in ctx.facts.sections:
        return skipped("cache", name, "writable", "no write probe in the collected facts")
    if not mounted:
        return skipped("cache", name, "writable", "the cache is not mounted")
    write = parse_cache_write(ctx.facts.get("cache_writable"))
    if write.created and write.removed:
        observed = "a file created and removed"
    elif write.created:
        observed = f"a file created, not removed: {write.error or 'no report of the removal'}"
    else:
        observed = f"no file created: {write.error or 'no report of the probe'}"
    return verdict(
        "cache",
        name,
        "writable",
        write.created and write.removed,
        observed,
        cache_write_expectation(ctx.config),
        created=write.created,
        removed=write.removed,
        error=write.error,
    )


def parse_array(mdstat: str) -> list[str]:
    """The member devices of the active RAID0 array in ``/proc/mdstat`` (pure)."""
    active = re.search(r"^(md\S+) : active raid0 (.+)$", mdstat, re.MULTILINE)
    return active.group(2).split() if active else []


def judge(ctx: Context) -> list[Finding]:
    name, cache = ctx.host.name, ctx.config.cache
    if not ctx.host.nvme:
        reason = "no NVMe drives declared for this host"
        return [skipped("cache", name, check, reason) for check in ("mounted", "writable")]
    mount = ctx.facts.get("cache_mount").split()
    fstab = ctx.facts.get("cache_fstab").split()
    results = [
        verdict(
            "cache",
            name,
            "mounted",
            len(mount) >= 3 and mount[1] == cache.filesystem,
            f"{mount[1]} from {mount[0]}" if len(mount) >= 2 else "not mounted",
            f"{cache.filesystem} at {cache.mount_point}",
        )
    ]
    if len(mount) >= 3:
        options = mount[2].split(",")
        results.append(
            verdict("cache", name, "noatime", "noatime" in options, ",".join(options), "noatime")
        )
    else:
        results.append(skipped("cache", name, "noatime", "the cache is not mounted"))
    results.append(_cache_write_check(ctx, len(mount) >= 3))
    uuid = mount[3] if len(mount) >= 4 else ""
    by_uuid = bool(fstab) and fstab[0].startswith("UUID=")
    results.append(
        verdict(
            "cache",
            name,
            "persistent",
            by_uuid and (not uuid or fstab[0] == f"UUID={uuid}"),
            " ".join(fstab) or "no /etc/fstab entry",
            f"/etc/fstab mounts UUID={uuid or '<filesystem uuid>'} at {cache.mount_point}",
        )
    )
    results.append(_cache_read_check(ctx, len(mount) >= 3))
    if len(ctx.host.nvme) > 1:
        members = parse_array(ctx.facts.get("mdstat"))
        results.append(
            verdict(
                "cache",
                name,
                "members",
                len(members) == len(ctx.host.nvme),
                f"raid0 with {len(members)} member(s)" if members else "no active raid0 array",
                f"raid0 of {len(ctx.host.nvme)} drives",
                members=members,
            )
        )
    return results
