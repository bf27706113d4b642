"""``sovereign lab``: argument handling and the commands that need no guest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from components.cli import build_parser, main
from components.lab.cli import DEFAULT_LAB_STACK, LabShape, LabShapeError, resolve_lab_shape

ROOT = Path(__file__).resolve().parents[2]
LAB_STACK = ROOT / DEFAULT_LAB_STACK


def test_up_takes_hosts_drives_sizes_and_ports() -> None:
    args = build_parser().parse_args(
        ["lab", "up", "--hosts", "3", "--nvme", "1", "--nvme-size", "4G", "--base-port", "2400"]
    )
    assert (args.hosts, args.nvme, args.nvme_size, args.base_port) == (3, 1, "4G", 2400)
    assert callable(args.func)


def test_up_leaves_hosts_and_drives_to_the_lab_stack_and_starts_from_port_2201() -> None:
    args = build_parser().parse_args(["lab", "up"])
    assert (args.hosts, args.nvme, args.nvme_size, args.base_port) == (None, None, "2G", 2200)
    assert Path(args.stack) == DEFAULT_LAB_STACK


def test_up_without_hosts_or_drives_starts_what_the_lab_stack_needs() -> None:
    declared = yaml.safe_load(LAB_STACK.read_text())["config"]["sovereign-inference:hosts"]
    shape = resolve_lab_shape(None, None, LAB_STACK)
    assert (shape.hosts, shape.nvme) == (len(declared), max(len(h["nvme"]) for h in declared))
    assert shape.source == str(LAB_STACK)


def test_up_takes_what_is_given_and_the_rest_from_the_stack() -> None:
    assert resolve_lab_shape(3, None, LAB_STACK).hosts == 3
    assert resolve_lab_shape(None, 1, LAB_STACK).nvme == 1
    given = resolve_lab_shape(3, 1, Path("no-such-stack.yaml"))
    assert given == LabShape(3, 1, "the command line"), "a stack is not read when not needed"


def test_up_without_hosts_and_without_a_stack_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "Pulumi.lab.yaml"
    status = main(["lab", "up", "--nvme", "1", "--stack", str(missing), "--lab-dir", str(tmp_path)])
    assert status == 2
    err = capsys.readouterr().err
    assert f"lab up: --hosts not given and no lab stack at {missing}" in err
    assert not (tmp_path / "inventory.json").exists()


def test_up_refuses_a_stack_whose_hosts_it_would_not_name(tmp_path: Path) -> None:
    data = yaml.safe_load(LAB_STACK.read_text())
    data["config"]["sovereign-inference:hosts"][1]["name"] = "gpu-b"
    (tmp_path / "stacks").mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    stack = tmp_path / "stacks" / "Pulumi.lab.yaml"
    stack.write_text(yaml.safe_dump(data))
    with pytest.raises(LabShapeError, match=r"hosts\[1\]\.name is 'gpu-b'; lab up starts lab-2"):
        resolve_lab_shape(None, None, stack)


def test_lab_needs_a_subcommand() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lab"])


def test_status_of_an_empty_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "status", "--lab-dir", str(tmp_path)]) == 0
    assert "no lab hosts" in capsys.readouterr().out


def test_down_of_an_empty_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "down", "--lab-dir", str(tmp_path / "never-made")]) == 0
    assert "no lab hosts" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--hosts", "0", "--hosts must be at least 1"),
        ("--nvme", "9", "--nvme must be between 0 and 8"),
        ("--nvme-size", "lots", "--nvme-size"),
    ],
)
def test_up_refuses_bad_values_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    command = ["lab", "up", option, value, "--stack", str(LAB_STACK), "--lab-dir", str(tmp_path)]
    assert main(command) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "inventory.json").exists()
