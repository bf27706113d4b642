"""Host steps on real lab hosts (QEMU guests): idempotence, interruption, refusals, reboots.

Every step that can run without NVIDIA hardware or K3s downloads runs here for real: preflight,
base, the NVMe cache, the firewall and the probe environment; plus the driver step's refusal on a
host with no NVIDIA GPU on its bus.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from components.config.models import HostSpec
from components.execution.outcome import HostKeyMismatch, StepError, StepRefused
from components.execution.ssh import HostSession, HostTarget, run_step
from components.lab.inventory import LabHost
from components.plan.host_steps import StepPlan, render_host_steps
from components.plan.step_protocol import Mode
from tests.conftest import step_script
from tests.lab_stacks import LAB_STEPS, ROOT, lab_host_spec, lab_stack

pytestmark = pytest.mark.integration

STATE_PROBE = r"""
set -u
echo "== mounts"; findmnt -rn -o TARGET,SOURCE,FSTYPE,OPTIONS | grep -v -e ' /proc' -e '^/sys' -e '^/run' -e '^/dev' | sort
echo "== md"; cat /proc/mdstat | grep -v '^unused\|^Personalities' || true
echo "== files"
for f in /etc/fstab /etc/mdadm/mdadm.conf /etc/chrony/chrony.conf /etc/resolv.conf /etc/sysctl.d/90-sovereign.conf \
  /etc/modules-load.d/sovereign.conf /etc/ssh/sshd_config.d/50-sovereign.conf /etc/nftables.d/sovereign.nft \
  /etc/systemd/system/sovereign-firewall.service /opt/sovereign/probe/lib/pynvml.py /opt/sovereign/probe/VERSION; do
  if [ -e "$f" ]; then echo "$f $(stat -c '%a %Y' "$f") $(sha256sum "$f" | cut -d' ' -f1)"; else echo "$f absent"; fi
done
echo "== nft"; nft list table inet sovereign 2>/dev/null | sha256sum
echo "== held"; apt-mark showhold
"""


def spec_for(entry: LabHost, *, wipe: bool = True, gpus: int = 0) -> HostSpec:
    return lab_host_spec(entry, wipe=wipe, gpus=gpus)


def steps_for(host: HostSpec, names: tuple[str, ...] = LAB_STEPS) -> list[StepPlan]:
    return render_host_steps(lab_stack(), host, only=names)


@pytest.fixture
def session_for() -> Iterator[Callable[[HostSpec], HostSession]]:
    sessions: list[HostSession] = []

    def make(host: HostSpec) -> HostSession:
        session = HostSession(HostTarget.from_spec(host, ROOT), lab_stack().ssh)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


def state(session: HostSession) -> str:
    return session.run_script(STATE_PROBE, timeout=60).stdout


def run_all(session: HostSession, steps: list[StepPlan], mode: Mode = "apply") -> dict[str, str]:
    return {
        s.name: run_step(
            session, s.name, s.script, mode=mode, payloads=s.payloads, env=s.env
        ).result
        for s in steps
    }


def test_every_lab_step_converges_and_a_second_run_changes_nothing(
    lab_host: LabHost, session_for: Callable[[HostSpec], HostSession]
) -> None:
    host = spec_for(lab_host)
    steps = steps_for(host)
    assert [s.name for s in steps] == list(LAB_STEPS)
    session = session_for(host)
    first = run_all(session, steps)
    assert first["40-nvme-cache"] == "changed"
    assert first["60-firewall"] == "changed"
    assert first["70-probe-env"] == "changed"
    before = state(session)
    second = run_all(session, steps)
    assert set(second.values()) == {"unchanged"}, second
    assert state(session) == before, "a second run must not touch the host"
    checked = run_all(session, steps, mode="check")
    assert set(checked.values()) == {"unchanged"}, checked
    # the cache is what the stack asked for
    out = session.run_script(
        "findmnt -n -o FSTYPE,OPTIONS --mountpoint /var/lib/sovereign/weights; cat /proc/mdstat\n"
    ).stdout
    assert out.startswith("xfs")
    assert "noatime" in out
    assert "raid0" in out


def test_cache_drift_is_reported_by_check_and_repaired_by_apply(
    lab_host: LabHost, session_for: Callable[[HostSpec], HostSession]
) -> None:
    host = spec_for(lab_host)
    (cache,) = steps_for(host, ("40-nvme-cache",))
    session = session_for(host)
    run_step(session, cache.name, cache.script)
    session.run_script("umount /var/lib/sovereign/weights\n")
    drift = run_step(session, cache.name, cache.script, mode="check")
    assert drift.result == "drift"
    assert drift.drift is not None
    assert "mount" in drift.drift
    repaired = run_step(session, cache.name, cache.script)
    assert repaired.result == "changed"
    assert run_step(session, cache.name, cache.script).result == "unchanged"


def test_interrupted_runs_converge(
    lab_host: LabHost, session_for: Callable[[HostSpec], HostSession]
) -> None:
    """Cut the SSH connection inside the base, cache and firewall steps, then run again.

    Each run is cut when a step picked at random streams its first line: that step has begun on
    the host, so the cut lands inside the run whatever the machine's speed. Where in the step it
    lands is up to the host: mid-step (the step fails and the run stops) or just after the step's
    end (the next step reconnects); both leave a host the next run must converge.
    """
    host = spec_for(lab_host)
    steps = steps_for(host, ("10-base", "40-nvme-cache", "60-firewall"))
    rng = random.Random(20261127)
    runs = 6
    cuts = 0
    for _ in range(runs):
        session = session_for(host)
        cut_in = rng.choice(steps).name
        cut: list[str] = []

        def cut_on_first_line(
            _stream: str, line: str, s: HostSession = session, seen: list[str] = cut
        ) -> None:
            if seen:
                return
            seen.append(line)
            transport = s._client.get_transport() if s._client else None
            assert transport is not None, "a step streamed a line without a connection"
            transport.close()

        try:
            for step in steps:
                sink = cut_on_first_line if step.name == cut_in else None
                run_step(
                    session,
                    step.name,
                    step.script,
                    payloads=step.payloads,
                    on_line=sink,
                    env=step.env,
                )
        except StepError:
            pass
        finally:
            session.close()
        cuts += bool(cut)
    assert cuts == runs, "every run should have been cut by a line its chosen step streamed"
    session = session_for(host)
    final = run_all(session, steps)
    assert "failed" not in final.values()
    again = run_all(session, steps)
    assert set(again.values()) == {"unchanged"}, again


def test_disks_holding_data_are_refused_and_left_intact(
    lab_host: LabHost, session_for: Callable[[HostSpec], HostSession]
) -> None:
    host = spec_for(lab_host, wipe=False)
    first, second = (f"/dev/disk/by-id/{d}" for d in lab_host.nvme)
    session = session_for(host)
    prep = session.run_script(
        f"set -e\nmkfs.ext4 -q -F {first}\nmkdir -p /mnt/d\nmount {first} /mnt/d\n"
        "echo precious >/mnt/d/data.txt\numount /mnt/d\n"
        # an MBR partition table with one Linux partition, written byte by byte (no fdisk here)
        f"printf '\\x00\\x20\\x21\\x00\\x83\\x20\\x21\\x00\\x00\\x08\\x00\\x00\\x00\\x08\\x00\\x00' | "
        f"dd of={second} bs=1 seek=446 conv=notrunc status=none\n"
        f"printf '\\x55\\xaa' | dd of={second} bs=1 seek=510 conv=notrunc status=none\n"
        f"wipefs -n --noheadings --output TYPE {second}\n",
    )
    assert prep.exit_status == 0, prep.stderr_tail
    (cache,) = steps_for(host, ("40-nvme-cache",))
    with pytest.raises(StepRefused, match="holds data") as info:
        run_step(session, cache.name, cache.script)
    assert "wipe: true" in str(info.value)
    check = session.run_script(
        f"set -e\nmount -o ro {first} /mnt/d\ncat /mnt/d/data.txt\numount /mnt/d\n"
        f"blkid -p -s PTTYPE -o value {second}\ntest ! -e /dev/md/sovereign-cache && echo no-array\n"
    )
    assert check.exit_status == 0, check.stderr_tail
    assert check.stdout.split() == ["precious", "dos", "no-array"]


def test_wipeable_disks_with_data_are_wiped_and_used(
    lab_host: LabHost, session_for: Callable[[HostSpec], HostSession]
) -> None:
    host = spec_for(lab_host, wipe=True)
    first = f"/dev/disk/by-id/{lab_host.nvme[0]}"
    session = session_for(host)
    assert session.run_script(f"mkfs.ext4 -q -F {first}\n").exit_status == 0
    (cache,) = steps_for(host, ("40-nvme-cache",))
    outcome = run_step(session, cache.name, cache.script)
    assert any(c.startswith(f"wipe {lab_host.nvme[0]}") for c in outcome.changes)


def test_cache_survives_reboot_and_teardown_keeps_data(
    lab_host: LabHost, session_for: Callable[[HostSpec], HostSession]
) -> None:
    host = spec_for(lab_host)
    (cache,) = steps_for(host, ("40-nvme-cache",))
    session = session_for(host)
    created = run_step(session, cache.name, cache.script)
    uuid = created.facts["cache.fs_uuid"]
    session.run_script("echo weights >/var/lib/sovereign/weights/model.bin\n")
    session.reboot_and_wait()
    after = session.run_script(
        "findmnt -n -o UUID --mountpoint /var/lib/sovereign/weights; cat /var/lib/sovereign/weights/model.bin\n"
    )
    assert after.stdout.split() == [uuid, "weights"]
    assert run_step(session, cache.name, cache.script).result == "unchanged"
    assert run_step(session, cache.name, cache.script, mode="teardown").result == "changed"
    assert session.run_script("findmnt --mountpoint /var/lib/sovereign/weights\n").exit_status != 0
    # the drives keep the array: the next apply assembles it again, data intact
    again = run_step(session, cache.name, cache.script)
    assert any("assemble existing array" in c for c in again.changes), again.changes
    assert session.run_script("cat /var/lib/sovereign/weights/model.bin\n").stdout == "weights"


def test_reboot_required_step_completes(
    lab_host: LabHost, session_for: Callable[[HostSpec], HostSession]
) -> None:
    host = spec_for(lab_host)
    body = (
        "apply() {\n"
        "  local boot\n"
        "  boot=$(cat /proc/sys/kernel/random/boot_id)\n"
        "  if [ ! -f /var/lib/needs-boot ]; then\n"
        '    change "install something that needs a reboot" eval "echo $boot >/var/lib/needs-boot"\n'
        '    reboot_required "new kernel module"\n'
        "  fi\n"
        '  if [ "$(cat /var/lib/needs-boot)" = "$boot" ]; then\n'
        '    reboot_required "still on the old boot"\n'
        "  fi\n"
        '  fact booted "$boot"\n'
        "}\n"
    )
    script = step_script(body, "95-reboot")
    session = session_for(host)
    outcome = run_step(session, "95-reboot", script, reboot_allowed=True)
    assert outcome.rebooted
    assert outcome.result == "changed"
    assert run_step(session, "95-reboot", script, reboot_allowed=True).result == "unchanged"


def test_host_key_mismatch_is_refused_before_anything_runs(
    lab_host: LabHost, session_for: Callable[[HostSpec], HostSession]
) -> None:
    wrong = spec_for(lab_host)
    wrong = wrong.model_copy(
        update={"ssh": wrong.ssh.model_copy(update={"host_key": "SHA256:" + "Z" * 43})}
    )
    (preflight,) = steps_for(wrong, ("00-preflight",))
    with pytest.raises(HostKeyMismatch) as info:
        run_step(session_for(wrong), preflight.name, "touch /root/ran\n" + preflight.script)
    assert lab_host.host_key in str(info.value)
    right = session_for(spec_for(lab_host))
    assert right.run_script("test -e /root/ran || echo clean\n").stdout == "clean"


def test_driver_step_refuses_a_host_without_nvidia_gpus(
    lab_host: LabHost, session_for: Callable[[HostSpec], HostSession]
) -> None:
    host = spec_for(lab_host, gpus=8)
    (driver,) = steps_for(host, ("20-nvidia-driver",))
    with pytest.raises(StepRefused, match="no NVIDIA GPU on the PCI bus"):
        run_step(session_for(host), driver.name, driver.script, reboot_allowed=True)
    (preflight,) = steps_for(host, ("00-preflight",))
    with pytest.raises(StepRefused, match=r"expected 8 x H100-SXM5-80GB .* found 0 NVIDIA GPU"):
        run_step(session_for(host), preflight.name, preflight.script)
