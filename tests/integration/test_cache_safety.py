"""The NVMe cache step never costs data: refusals on lab hosts that hold real data, kept through a reboot.

Each scenario puts data with a known sha256 on the drives, runs the cache step (``apply`` and its dry
run ``check``), and expects exit 3 with a message that names the problem and no change line. One host
carries every scenario at once (eight drives), so one pass of checksums (and of ``/etc/fstab``, which
must stay byte-identical) before the runs, after them and after one reboot covers them all. The same
host then shows the paths that do change things: teardown, adopting a labelled filesystem, and
wiping drives marked wipeable.

LVM without lvm2: the lab image has no lvm2, and installing it in a TCG guest takes minutes (its
initramfs trigger alone runs for more than four). An active logical volume is, for the kernel, a
device-mapper linear target over the physical volume; the scenario builds exactly that with
``dmsetup`` (named ``vg-lv``, with an ``LVM-`` uuid, data from 1 MiB as LVM's default ``pe_start``) on
a partition that carries a real LVM2 label (libblkid reports it as ``LVM2_member``). The step's holder
check reads the kernel's holder links in sysfs, which are the same either way.
"""

from __future__ import annotations

import base64
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sovereign_weights.units import MIB

from components.config.models import CacheDisk, CacheSpec, HostSpec
from components.execution.outcome import parse_step_output
from components.execution.ssh import HostSession, HostTarget, RunResult
from components.lab.inventory import LabHost
from components.plan.host_steps import (
    CACHE_FS_LABEL,
    StepPlan,
    render_cache_step,
    render_host_steps,
)
from components.plan.step_protocol import EXIT_REFUSED
from tests.lab_stacks import ROOT, lab_host_spec, lab_stack

# the ``lab_hosts`` fixture (tests/integration/conftest.py): lab_hosts(count, nvme=..., nvme_size=...)
LabHostsFactory = Callable[..., list[LabHost]]


DEFAULT_MOUNT_POINT = "/var/lib/sovereign/weights"
STEP_TIMEOUT_S = 300
REBOOT_TIMEOUT_S = 600
# the logical volume of the LVM scenario: a 64 MiB partition, data from 1 MiB (LVM's pe_start)
PARTITION_SECTORS = 131072
LV_OFFSET_SECTORS = 2048
LV_NAME = "vgcache-data"
LV_UUID = "LVM-" + "A" * 32 + "B" * 32


def lvm2_label(pv_uuid: str, device_size: int) -> bytes:
    """Sector 1 of a PV: LVM2's label header and PV header, with the label CRC LVM computes."""
    assert len(pv_uuid) == 32
    pv_header = pv_uuid.encode() + struct.pack("<Q", device_size)
    # one data area from 1 MiB to the end, then the two zero-terminated area lists
    pv_header += struct.pack("<QQ", MIB, 0) + bytes(16) + bytes(16)
    body = struct.pack("<I", 32) + b"LVM2 001" + pv_header
    body += bytes(512 - 20 - len(body))
    # LVM's CRC: the CRC-32 polynomial from an initial value of 0xf597a6cf, without final inversion
    crc = zlib.crc32(body, 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
    return b"LABELONE" + struct.pack("<QI", 1, crc) + body


def mbr_with_one_partition(start_sector: int, sectors: int, kind: int) -> bytes:
    """An MBR with one primary partition (the lab image has no fdisk)."""
    entry = struct.pack(
        "<B3sB3sII", 0, b"\xff\xff\xfe", kind, b"\xff\xff\xfe", start_sector, sectors
    )
    return bytes(446) + entry + bytes(48) + b"\x55\xaa"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class Drives:
    """The by-id names of one lab host's drives, by the role each plays in the scenarios."""

    ids: tuple[str, ...]

    def path(self, index: int) -> str:
        return f"/dev/disk/by-id/{self.ids[index]}"


def cache_step(
    entry: LabHost,
    disks: list[tuple[str, bool]],
    *,
    mount_point: str = DEFAULT_MOUNT_POINT,
    array_name: str = "sovereign-cache",
) -> StepPlan:
    """The cache step for these drives (id, wipe). Ids are taken as given: the host must judge them."""
    host = lab_host_spec(entry).model_copy(
        update={"nvme": tuple(CacheDisk.model_construct(id=i, wipe=w) for i, w in disks)}
    )
    cache = CacheSpec(mount_point=mount_point, array_name=array_name)
    return render_cache_step(host, cache)


@pytest.fixture
def session_for() -> Iterator[Callable[[LabHost], HostSession]]:
    sessions: list[HostSession] = []

    def make(entry: LabHost) -> HostSession:
        host: HostSpec = lab_host_spec(entry)
        # a guest with eight drives reboots in minutes under TCG on a busy 2-core machine
        settings = lab_stack().ssh.model_copy(update={"reboot_timeout_seconds": REBOOT_TIMEOUT_S})
        session = HostSession(HostTarget.from_spec(host, ROOT), settings)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


def run_mode(session: HostSession, step: StepPlan, mode: str) -> RunResult:
    return session.run_script(step.script, {"SOVEREIGN_MODE": mode}, timeout=STEP_TIMEOUT_S)


def sh(session: HostSession, script: str) -> str:
    result = session.run_script("set -eu\n" + script, timeout=STEP_TIMEOUT_S)
    assert result.exit_status == 0, f"{script}\n{result.stderr_tail}"
    return result.stdout


def expect_refusal(session: HostSession, step: StepPlan, *fragments: str) -> str:
    """Run ``step`` in check and apply mode: both exit 3 with the same refusal, change nothing."""
    refusals = []
    for mode in ("check", "apply"):
        result = run_mode(session, step, mode)
        parsed = parse_step_output(result.stdout)
        assert result.exit_status == EXIT_REFUSED, (mode, result.stdout, result.stderr_tail)
        assert parsed.changes == (), (mode, parsed.changes)
        assert parsed.drift is None, (mode, parsed.drift)
        assert parsed.refused is not None
        refusals.append(parsed.refused)
    assert refusals[0] == refusals[1], "check must be an exact dry run of apply"
    for fragment in fragments:
        assert fragment in refusals[0], refusals[0]
    return refusals[0]


def prepare_scenarios(session: HostSession, d: Drives) -> None:
    """Put data on every drive; see ``test_refusals_keep_every_byte_through_a_reboot`` for roles."""
    lv_sectors = PARTITION_SECTORS - LV_OFFSET_SECTORS
    ledger = b"".join(b"customer ledger row %06d\n" % i for i in range(2600))[:65536]
    script = f"""
write_file() {{ head -c 262144 /dev/urandom >"$1/data.bin"; sync; }}
mkdir -p /mnt/prep
# 0: ext4 with data (its stack says wipe: true, but a later drive or the mount point is not free)
mkfs.ext4 -q -F {d.path(0)} </dev/null
mount {d.path(0)} /mnt/prep && write_file /mnt/prep && umount /mnt/prep
# 1: the user's own filesystem, mounted at the cache mount point and listed in /etc/fstab
mkfs.ext4 -q -F -L userdata {d.path(1)} </dev/null
mkdir -p {DEFAULT_MOUNT_POINT}
mount {d.path(1)} {DEFAULT_MOUNT_POINT} && write_file {DEFAULT_MOUNT_POINT}
echo "UUID=$(blkid -s UUID -o value {d.path(1)}) {DEFAULT_MOUNT_POINT} ext4 defaults 0 2" >>/etc/fstab
# 2: a partition holding an LVM physical volume with an active logical volume
echo {b64(mbr_with_one_partition(LV_OFFSET_SECTORS, PARTITION_SECTORS, 0x8E))} | base64 -d |
  dd of={d.path(2)} conv=notrunc,fsync status=none
partx -a {d.path(2)} 2>/dev/null || partx -u {d.path(2)}
udevadm settle
echo {b64(lvm2_label("P" * 32, PARTITION_SECTORS * 512))} | base64 -d |
  dd of={d.path(2)}-part1 bs=512 seek=1 conv=notrunc,fsync status=none
test "$(blkid -p -s TYPE -o value {d.path(2)}-part1)" = LVM2_member
dmsetup create {LV_NAME} --uuid {LV_UUID} \\
  --table "0 {lv_sectors} linear $(readlink -f {d.path(2)}-part1) {LV_OFFSET_SECTORS}"
mkfs.ext4 -q -F /dev/mapper/{LV_NAME} </dev/null
mount /dev/mapper/{LV_NAME} /mnt/prep && write_file /mnt/prep && umount /mnt/prep
# 3: a foreign xfs filesystem (label "data", not the cache label)
mkfs.xfs -q -f -L data {d.path(3)} </dev/null
mount {d.path(3)} /mnt/prep && write_file /mnt/prep && umount /mnt/prep
# 4, 5: a running RAID1 array with the stack's array name and even the cache label, but RAID1
mdadm --create /dev/md/s5 --run --assume-clean --metadata=1.2 --name=s5 --level=1 \\
  --raid-devices=2 {d.path(4)} {d.path(5)} </dev/null 2>/dev/null
udevadm settle
mkfs.xfs -q -f -L sov-weights /dev/md/s5 </dev/null
mount /dev/md/s5 /mnt/prep && write_file /mnt/prep && umount /mnt/prep
# 6, 7: no signature at all, but bytes in the first MiB (6) and in the last MiB (7)
echo {b64(ledger)} | base64 -d | dd of={d.path(6)} bs=4096 seek=4 conv=notrunc,fsync status=none
size=$(blockdev --getsize64 {d.path(7)})
echo {b64(ledger)} | base64 -d |
  dd of={d.path(7)} bs=4096 seek=$(( (size - 65536) / 4096 )) conv=notrunc,fsync status=none
test -z "$(wipefs --noheadings {d.path(6)} {d.path(7)})"
"""
    sh(session, script)


def evidence(session: HostSession, d: Drives) -> dict[str, str]:
    """sha256 of every scenario's data and of /etc/fstab, read without writing to the drives."""
    lv_sectors = PARTITION_SECTORS - LV_OFFSET_SECTORS
    script = f"""
mkdir -p /mnt/ev
file_sha() {{ mount -o ro "$2" /mnt/ev; echo "$1 $(sha256sum /mnt/ev/data.bin | cut -d' ' -f1)"; umount /mnt/ev; }}
file_sha drive0-ext4 {d.path(0)}
echo "drive1-user-fs-at-mount-point $(sha256sum {DEFAULT_MOUNT_POINT}/data.bin | cut -d' ' -f1)"
echo "drive1-mounted-at-mount-point $(findmnt -n -o LABEL --mountpoint {DEFAULT_MOUNT_POINT})"
# after a reboot the volume is activated again, as vgchange -ay would
test -e /dev/mapper/{LV_NAME} || dmsetup create {LV_NAME} --uuid {LV_UUID} \\
  --table "0 {lv_sectors} linear $(readlink -f {d.path(2)}-part1) {LV_OFFSET_SECTORS}"
file_sha drive2-lvm-volume /dev/mapper/{LV_NAME}
file_sha drive3-foreign-xfs {d.path(3)}
# the RAID1 array, wherever udev's incremental assembly put it (or assembled here if it did not)
member=$(basename "$(readlink -f {d.path(4)})")
md=$(ls /sys/class/block/$member/holders/)
if [ -z "$md" ]; then
  mdadm --assemble /dev/md/s5 {d.path(4)} {d.path(5)} </dev/null 2>/dev/null
  md=$(ls /sys/class/block/$member/holders/)
fi
file_sha drive45-raid1 /dev/$md
echo "drive6-first-mib $(head -c {MIB} {d.path(6)} | sha256sum | cut -d' ' -f1)"
size=$(blockdev --getsize64 {d.path(7)})
echo "drive7-last-mib $(dd if={d.path(7)} bs=4096 skip=$(( (size - {MIB}) / 4096 )) status=none | sha256sum | cut -d' ' -f1)"
echo "fstab $(sha256sum /etc/fstab | cut -d' ' -f1)"
echo "mdadm.conf $(if [ -e /etc/mdadm/mdadm.conf ]; then sha256sum /etc/mdadm/mdadm.conf | cut -d' ' -f1; else echo absent; fi)"
"""
    lines = sh(session, script).splitlines()
    return dict(line.split(" ", 1) for line in lines)


@pytest.mark.integration
def test_refusals_keep_every_byte_through_a_reboot(
    lab_hosts: LabHostsFactory, session_for: Callable[[LabHost], HostSession]
) -> None:
    """Drives 0-7 hold data for the scenarios below; every step run is refused, nothing is lost.

    0: ext4 with data, marked wipeable (it is the first drive of several stacks: never wiped while
       another check fails); 1: the user's ext4 mounted at the cache mount point, in /etc/fstab;
    2: a partition with an LVM PV and an active volume; 3: a foreign xfs; 4+5: a RAID1 array with the
    stack's array name; 6, 7: unlabelled bytes in the first and in the last MiB.
    """
    started = time.monotonic()
    (entry,) = lab_hosts(1, nvme=8, nvme_size="1G")
    d = Drives(entry.nvme)
    session = session_for(entry)
    prepare_scenarios(session, d)
    before = evidence(session, d)
    prepared = time.monotonic()
    refusals: dict[str, str] = {}

    # a wrong id on the second drive: the root disk. The first drive may be wiped, and still is not.
    sh(session, "ln -sfn ../../vda /dev/disk/by-id/nvme-WRONG_ROOT_DISK\n")
    refusals["wrong second id (root disk)"] = expect_refusal(
        session,
        cache_step(
            entry, [(d.ids[0], True), ("nvme-WRONG_ROOT_DISK", True)], mount_point="/srv/s1"
        ),
        "nvme-WRONG_ROOT_DISK (/dev/vda) is in use (mounted at /)",
    )
    # another filesystem on the mount point: neither its fstab line nor the wipeable drive is touched
    refusals["another filesystem on the mount point"] = expect_refusal(
        session,
        cache_step(entry, [(d.ids[0], True)]),
        f"{DEFAULT_MOUNT_POINT} already has /dev/",
        "/etc/fstab already mounts UUID=",
    )
    # an LVM physical volume on a partition of a wipeable drive, its volume active
    refusals["LVM PV on a partition"] = expect_refusal(
        session,
        cache_step(entry, [(d.ids[0], True), (d.ids[2], True)], mount_point="/srv/s3"),
        f"cache drive {d.ids[2]} ",
        f"(LVM {LV_NAME})",
        "release it first",
    )
    # a foreign xfs disk on the single-drive path: not adopted, not wiped
    refusals["foreign xfs disk"] = expect_refusal(
        session,
        cache_step(entry, [(d.ids[3], False)], mount_point="/srv/s4"),
        f"cache drive {d.ids[3]} ",
        "holds data (xfs labelled data)",
        "wipe: true",
    )
    # an array of another level with the stack's name, running, on wipeable drives
    refusals["RAID1 array, running"] = expect_refusal(
        session,
        cache_step(
            entry, [(d.ids[4], True), (d.ids[5], True)], mount_point="/srv/s5", array_name="s5"
        ),
        "level raid1",
        "not this stack's s5 at raid0",
    )
    # the same array stopped: its members hold data
    sh(session, "mdadm --stop /dev/md/s5 </dev/null 2>/dev/null\n")
    refusals["RAID1 array, stopped"] = expect_refusal(
        session,
        cache_step(
            entry, [(d.ids[4], False), (d.ids[5], False)], mount_point="/srv/s5", array_name="s5"
        ),
        "linux_raid_member (array ",
        "s5 raid1)",
    )
    # unlabelled bytes in the first MiB of one drive and the last MiB of another: both reported
    refusals["unlabelled bytes"] = expect_refusal(
        session,
        cache_step(entry, [(d.ids[6], False), (d.ids[7], False)], mount_point="/srv/s6"),
        f"cache drive {d.ids[6]} ",
        f"cache drive {d.ids[7]} ",
        "unlabelled data",
    )
    # partitions are never cache drives: not by their -partN link, nor by another link to one
    refusals["partition link"] = expect_refusal(
        session,
        cache_step(entry, [(f"{d.ids[2]}-part1", True)], mount_point="/srv/s7"),
        "names a partition",
    )
    sh(session, f'ln -sfn "$(readlink -f {d.path(2)}-part1)" /dev/disk/by-id/nvme-ALIAS_OF_PART\n')
    refusals["link resolving to a partition"] = expect_refusal(
        session,
        cache_step(entry, [("nvme-ALIAS_OF_PART", True)], mount_point="/srv/s7"),
        "a partition; list the whole drive",
    )
    # every byte and /etc/fstab as they were, now and after a reboot
    assert evidence(session, d) == before
    refused = time.monotonic()
    session.reboot_and_wait()
    after = evidence(session, d)
    rebooted = time.monotonic()
    for name, refusal in refusals.items():
        print(f"REFUSED [{name}]: {refusal}")
    for key in before:
        print(f"SHA256 {key}: before {before[key]} after-reboot {after[key]}")
    assert after == before
    assert after["drive1-mounted-at-mount-point"] == "userdata"

    # teardown leaves the user's filesystem mounted and its fstab line in place
    teardown = run_mode(session, cache_step(entry, [(d.ids[0], True)]), "teardown")
    assert teardown.exit_status == 0, teardown.stderr_tail
    assert parse_step_output(teardown.stdout).result == "unchanged"

    # the single-drive path adopts a filesystem once it carries the cache label, and undoes only that
    sh(session, f"xfs_admin -L {CACHE_FS_LABEL} {d.path(3)} </dev/null >/dev/null\n")
    adopt = cache_step(entry, [(d.ids[3], False)], mount_point="/srv/s4")
    first = run_mode(session, adopt, "apply")
    assert first.exit_status == 0, first.stdout + first.stderr_tail
    assert not any(c.startswith("make ") for c in parse_step_output(first.stdout).changes)
    assert parse_step_output(run_mode(session, adopt, "apply").stdout).result == "unchanged"
    assert parse_step_output(run_mode(session, adopt, "check").stdout).result == "unchanged"
    adopted_sha = sh(session, "sha256sum /srv/s4/data.bin | cut -d' ' -f1\n").strip()
    assert adopted_sha == before["drive3-foreign-xfs"]
    undone = run_mode(session, adopt, "teardown")
    assert parse_step_output(undone.stdout).result == "changed"
    fstab = sh(session, "sha256sum /etc/fstab | cut -d' ' -f1\n").strip()
    assert fstab == before["fstab"], "teardown removes exactly the line apply added"

    # drives marked wipe: true are wiped whole once nothing holds them: the partition with its LVM
    # label (volume deactivated, as vgchange -an does) and the unlabelled bytes become a new cache
    sh(session, f"dmsetup remove {LV_NAME}\n")
    fresh = cache_step(
        entry, [(d.ids[2], True), (d.ids[6], True)], mount_point="/srv/fresh", array_name="fresh"
    )
    created = run_mode(session, fresh, "apply")
    assert created.exit_status == 0, created.stdout + created.stderr_tail
    changes = parse_step_output(created.stdout).changes
    assert any(c.startswith(f"wipe {d.ids[2]}") and "(LVM2_member)" in c for c in changes), changes
    assert any(c.startswith(f"wipe {d.ids[6]}") and "unlabelled data" in c for c in changes)
    assert any(c.startswith("create RAID0 /dev/md/fresh") for c in changes)
    state = sh(
        session,
        f'ls "/sys/class/block/$(basename "$(readlink -f {d.path(2)})")" | grep -c p1 || true\n'
        "findmnt -n -o FSTYPE,LABEL --mountpoint /srv/fresh\n",
    )
    assert state.split() == ["0", "xfs", CACHE_FS_LABEL]
    assert parse_step_output(run_mode(session, fresh, "apply").stdout).result == "unchanged"
    assert parse_step_output(run_mode(session, fresh, "check").stdout).result == "unchanged"
    print(
        f"TIMES prepare {prepared - started:.0f} s, refusals {refused - prepared:.0f} s, "
        f"reboot {rebooted - refused:.0f} s, adopt and wipe {time.monotonic() - rebooted:.0f} s"
    )


# Tools that read standard input when it is there (mkfs and mdadm ask questions on a terminal; any of
# them would swallow the rest of the step script, which bash reads from the same stdin).
_STDIN_TOOLS = re.compile(r"(?:^|[\s(|;&])(mkfs\.\w+|mdadm|wipefs|partx|udevadm|dd|blockdev)\s")


def test_no_tool_in_the_cache_step_reads_the_script_as_its_stdin() -> None:
    """A unit check on the rendered step: every such invocation has its stdin from /dev/null."""
    stack = lab_stack()
    (step,) = render_host_steps(stack, stack.hosts[0], only=("40-nvme-cache",))
    invocations = []
    commands = step.script.replace("\\\n", " ").splitlines()  # continuation lines joined
    for number, line in enumerate(commands, 1):
        if line.lstrip().startswith(("#", "refuse ", "log ", "problems+=(")):
            continue  # comments and messages may name a tool without running it
        for match in _STDIN_TOOLS.finditer(line):
            invocations.append((number, match.group(1), line))
    assert {tool for _, tool, _ in invocations} >= {"mkfs.xfs", "mkfs.ext4", "mdadm", "wipefs"}
    missing = [f"{n}: {line.strip()}" for n, _, line in invocations if "</dev/null" not in line]
    assert not missing, "\n".join(missing)
    # the cache label is the one the plan layer states, and the step writes it on every new filesystem
    assert f"FS_LABEL={CACHE_FS_LABEL}" in step.script
    assert step.script.count('-L "$FS_LABEL"') == 2
