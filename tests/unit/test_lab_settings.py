"""Lab directories, host and drive naming, and size parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.lab.settings import (
    host_name,
    nvme_disk_id,
    nvme_serial,
    parse_size,
    resolve_cache_dir,
    resolve_lab_dir,
)


def test_the_lab_dir_option_wins_over_the_environment(tmp_path: Path) -> None:
    env = {"SOVEREIGN_LAB_DIR": str(tmp_path / "env")}
    assert resolve_lab_dir(str(tmp_path / "cli"), env) == tmp_path / "cli"
    assert resolve_lab_dir(None, env) == tmp_path / "env"


def test_the_default_lab_dir_is_dot_lab_in_the_working_directory() -> None:
    assert resolve_lab_dir(None, {}) == Path.cwd() / ".lab"


def test_the_cache_follows_xdg_unless_told_otherwise(tmp_path: Path) -> None:
    assert resolve_cache_dir(None, {"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "sovereign-lab"
    env = {"XDG_CACHE_HOME": str(tmp_path), "SOVEREIGN_LAB_CACHE": str(tmp_path / "c")}
    assert resolve_cache_dir(None, env) == tmp_path / "c"
    assert resolve_cache_dir(str(tmp_path / "cli"), env) == tmp_path / "cli"


def test_names_and_serials() -> None:
    assert host_name(1) == "lab-1"
    assert nvme_serial(2, 0) == "LAB2NVME0"
    assert nvme_disk_id(1, 1) == "nvme-QEMU_NVMe_Ctrl_LAB1NVME1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 << 30),
        ("2GiB", 2 << 30),
        ("512M", 512 << 20),
        ("1t", 1 << 40),
        ("4096", 4096),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "1.5G", "2X", "0"])
def test_bad_sizes_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="positive number"):
        parse_size(text)
