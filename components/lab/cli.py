"""``sovereign lab up|down|status|image``: the local lab from the command line.

sovereign lab image                      # build (or find) the cached image and template
sovereign lab up                         # what stacks/Pulumi.lab.yaml needs: its hosts and drives
sovereign lab up --hosts 2 --nvme 2      # lab-1 on 127.0.0.1:2201, lab-2 on :2202
sovereign lab status
sovereign lab down
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import StackConfigError, load_stack_file
from components.lab.hosts import (
    KNOWN_HOSTS_NAME,
    LabError,
    host_requests,
    host_statuses,
    start_hosts,
    stop_hosts,
)
from components.lab.image import ImageBuildError, default_recipe_dir
from components.lab.inventory import InventoryError, inventory_path, lab_dir_problem
from components.lab.qmp import QmpError
from components.lab.settings import (
    DEFAULT_BASE_PORT,
    HOST_NAME_PREFIX,
    GuestShape,
    LabTimeouts,
    parse_size,
    resolve_cache_dir,
    resolve_lab_dir,
)
from components.lab.ssh import SshError
from components.lab.template import TemplateError, prepare_template

EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_NVME_SIZE = "2G"
# what `lab up` starts when --hosts or --nvme is not given: what this stack needs
DEFAULT_LAB_STACK = Path("stacks") / "Pulumi.lab.yaml"
LAB_ERRORS = (
    LabError,
    ImageBuildError,
    TemplateError,
    QmpError,
    SshError,
    InventoryError,
    OSError,
    subprocess.CalledProcessError,
)


def _add_dir_options(parser: argparse.ArgumentParser, *, lab: bool, cache: bool) -> None:
    if lab:
        parser.add_argument(
            "--lab-dir", metavar="DIR", help="lab state (default $SOVEREIGN_LAB_DIR or ./.lab)"
        )
    if cache:
        parser.add_argument(
            "--cache-dir",
            metavar="DIR",
            help="image cache (default $SOVEREIGN_LAB_CACHE or ~/.cache/sovereign-lab)",
        )


def _cmd_image(args: argparse.Namespace) -> int:
    started = time.monotonic()
    template = prepare_template(
        resolve_cache_dir(args.cache_dir), default_recipe_dir(), GuestShape(), LabTimeouts()
    )
    print(f"image:    {template.image.directory}")
    print(f"template: {template.directory} ({template.accel.value})")
    print(f"ready in {time.monotonic() - started:.1f}s")
    return 0


class LabShapeError(ValueError):
    """``lab up`` cannot tell how many hosts or drives to start; the message says what to give."""


@dataclass(frozen=True)
class LabShape:
    """How many hosts ``lab up`` starts and how many NVMe drives each gets, and from where."""

    hosts: int
    nvme: int
    source: str  # "the command line", or the stack file the counts were read from


def resolve_lab_shape(hosts: int | None, nvme: int | None, stack_file: Path) -> LabShape:
    """``--hosts`` and ``--nvme`` as given; what is not given is what ``stack_file`` needs: its
    host count and the most NVMe drives any of its hosts lists.

    The stack's hosts must be named as ``lab up`` names the hosts it starts (lab-1..lab-N), or
    the inventory it writes would fill none of them.
    """
    if hosts is not None and nvme is not None:
        return LabShape(hosts, nvme, "the command line")
    missing = " and ".join(
        option for option, value in (("--hosts", hosts), ("--nvme", nvme)) if value is None
    )
    if not stack_file.is_file():
        raise LabShapeError(
            f"{missing} not given and no lab stack at {stack_file} to read them from: give "
            f"{missing}, or --stack FILE"
        )
    try:
        config = load_stack_file(stack_file)
    except StackConfigError as exc:
        problems = "; ".join(str(problem) for problem in exc.problems)
        raise LabShapeError(
            f"{missing} not given and {stack_file} is not valid: {problems}"
        ) from None
    for i, host in enumerate(config.hosts):
        expected = f"{HOST_NAME_PREFIX}{i + 1}"
        if host.name != expected:
            raise LabShapeError(
                f"{stack_file}: hosts[{i}].name is {host.name!r}; lab up starts {expected} in its "
                f"place, so the inventory would not fill it: rename it, or give {missing}"
            )
    return LabShape(
        hosts if hosts is not None else len(config.hosts),
        nvme if nvme is not None else max((len(h.nvme) for h in config.hosts), default=0),
        str(stack_file),
    )


def _cmd_up(args: argparse.Namespace) -> int:
    shape = GuestShape()
    try:
        wanted = resolve_lab_shape(args.hosts, args.nvme, Path(args.stack))
    except LabShapeError as exc:
        print(f"lab up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if wanted.source != "the command line":
        print(f"from {wanted.source}: {wanted.hosts} host(s), {wanted.nvme} NVMe drive(s) each")
    if wanted.hosts < 1:
        print("lab up: --hosts must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if not 0 <= wanted.nvme <= shape.nvme_ports:
        print(f"lab up: --nvme must be between 0 and {shape.nvme_ports}", file=sys.stderr)
        return EXIT_USAGE
    try:
        nvme_size = parse_size(args.nvme_size)
    except ValueError as exc:
        print(f"lab up: --nvme-size: {exc}", file=sys.stderr)
        return EXIT_USAGE
    lab_dir = resolve_lab_dir(args.lab_dir)
    unusable = lab_dir_problem(lab_dir)
    if unusable:  # before the template is built: that takes minutes
        print(f"lab up: {unusable}", file=sys.stderr)
        return EXIT_USAGE
    timeouts = LabTimeouts()
    template = prepare_template(
        resolve_cache_dir(args.cache_dir), default_recipe_dir(), shape, timeouts
    )
    started = time.monotonic()
    hosts = start_hosts(
        lab_dir,
        template,
        host_requests(wanted.hosts, wanted.nvme, nvme_size, args.base_port),
        timeouts,
    )
    print(f"{len(hosts)} host(s) up in {time.monotonic() - started:.1f}s")
    for host in hosts:
        print(f"  {host.name}  {host.address}:{host.port}  {host.host_key}  {' '.join(host.nvme)}")
    print(f"inventory: {inventory_path(lab_dir)}")
    first = hosts[0]
    print(
        f"ssh: ssh -i {first.private_key} -o UserKnownHostsFile={lab_dir / KNOWN_HOSTS_NAME} "
        f"-p {first.port} {first.user}@{first.address}"
    )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    lab_dir = resolve_lab_dir(args.lab_dir)
    stopped = stop_hosts(lab_dir, None, LabTimeouts())
    print(f"stopped {len(stopped)} host(s): {' '.join(stopped)}" if stopped else "no lab hosts")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    statuses = host_statuses(resolve_lab_dir(args.lab_dir))
    if not statuses:
        print("no lab hosts")
        return 0
    print(f"{'NAME':<8} {'ADDRESS':<16} {'PID':>8}  STATE")
    for host, running in statuses:
        state = "running" if running else "gone"
        print(f"{host.name:<8} {host.address + ':' + str(host.port):<16} {host.pid:>8}  {state}")
    return 0 if all(running for _, running in statuses) else EXIT_FAILED


def _guarded(command: Any) -> Any:
    """Report the lab's own failures as one message and exit status 1, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            result: int = command(args)
        except LAB_ERRORS as exc:
            print(f"lab {args.lab_command}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return result

    return run


def register(sub: Any) -> None:
    """Add ``lab`` and its subcommands to the ``sovereign`` argument parser."""
    lab: argparse.ArgumentParser = sub.add_parser("lab", help="local QEMU lab hosts")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)

    image = lab_sub.add_parser("image", help="build or refresh the cached lab image and template")
    _add_dir_options(image, lab=False, cache=True)
    image.set_defaults(func=_guarded(_cmd_image))

    up = lab_sub.add_parser("up", help="start lab hosts lab-1..lab-N and write the inventory")
    up.add_argument(
        "--hosts", type=int, metavar="N", help="number of hosts (default: the --stack's hosts)"
    )
    up.add_argument(
        "--nvme",
        type=int,
        metavar="K",
        help="NVMe drives per host (default: the most any host of the --stack lists)",
    )
    up.add_argument(
        "--stack",
        default=str(DEFAULT_LAB_STACK),
        metavar="FILE",
        help=f"the stack whose hosts and drives to start when --hosts or --nvme is not given "
        f"(default {DEFAULT_LAB_STACK})",
    )
    up.add_argument(
        "--nvme-size", default=DEFAULT_NVME_SIZE, metavar="SIZE", help="size of each drive"
    )
    up.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        metavar="PORT",
        help="host i listens for SSH on 127.0.0.1:PORT+i",
    )
    _add_dir_options(up, lab=True, cache=True)
    up.set_defaults(func=_guarded(_cmd_up))

    down = lab_sub.add_parser("down", help="stop all lab hosts and remove their files")
    _add_dir_options(down, lab=True, cache=False)
    down.set_defaults(func=_guarded(_cmd_down))

    status = lab_sub.add_parser("status", help="list lab hosts and whether they run")
    _add_dir_options(status, lab=True, cache=False)
    status.set_defaults(func=_guarded(_cmd_status))
