"""``sovereign lab``: argument handling and the commands that need no guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.cli import build_parser, main


def test_up_takes_hosts_drives_sizes_and_ports() -> None:
    args = build_parser().parse_args(
        ["lab", "up", "--hosts", "3", "--nvme", "1", "--nvme-size", "4G", "--base-port", "2400"]
    )
    assert (args.hosts, args.nvme, args.nvme_size, args.base_port) == (3, 1, "4G", 2400)
    assert callable(args.func)


def test_up_defaults_to_one_host_with_two_drives_from_port_2201() -> None:
    args = build_parser().parse_args(["lab", "up"])
    assert (args.hosts, args.nvme, args.nvme_size, args.base_port) == (1, 2, "2G", 2200)


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
    assert main(["lab", "up", option, value, "--lab-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "inventory.json").exists()
