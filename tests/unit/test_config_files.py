"""What a stack file or inventory can be on disk: whatever it holds, loading it ends in a
:class:`StackConfigError` naming the line or the field, within a bound of time and memory, and
``sovereign validate`` exits 2 without a traceback."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from components.config import StackConfigError, load_stack_file
from components.config.loader import LAB_UP_HINT, MAX_DEPTH, MAX_FILE_BYTES, MAX_PROBLEMS
from components.lab.inventory import INVENTORY_VERSION, LabInventory, save_inventory
from tests.conftest import sovereign
from tests.unit.test_lab_inventory import lab_host

ROOT = Path(__file__).resolve().parents[2]
STAGING = (ROOT / "stacks" / "Pulumi.staging.yaml").read_text()
LAB = (ROOT / "stacks" / "Pulumi.lab.yaml").read_text()


def project(tmp_path: Path) -> Path:
    (tmp_path / "Pulumi.yaml").write_text("name: sovereign-inference\nruntime: python\n")
    (tmp_path / "stacks").mkdir(exist_ok=True)
    return tmp_path


def refusal(path: Path, **kwargs: bool) -> str:
    """Every problem of a refused file as text, checking it took under a second of CPU."""
    started = time.process_time()
    with pytest.raises(StackConfigError) as info:
        load_stack_file(path, **kwargs)
    assert time.process_time() - started < 1.0
    return "\n".join(str(p) for p in info.value.problems)


def _alias_bomb() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=False):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "config:\n" + "\n".join("  " + line for line in lines) + "\n"


def _deep_block(levels: int) -> str:
    return "config:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(levels)) + "v\n"


FILE_CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    # name: (write the file at the path, a fragment of the refusal)
    "oversize": (
        lambda p: p.write_text(STAGING + "#" * (MAX_FILE_BYTES + 1) + "\n"),
        "larger than 1024 KiB",
    ),
    "alias-bomb": (lambda p: p.write_text(_alias_bomb()), "expands to more than"),
    "recursive-alias": (lambda p: p.write_text("config: &c\n  x: *c\n"), "recursive alias"),
    "deep-block-nesting": (
        lambda p: p.write_text(_deep_block(MAX_DEPTH + 5)),
        f"nested deeper than {MAX_DEPTH} levels",
    ),
    "deep-flow-nesting": (
        lambda p: p.write_text("config: " + "[" * 200_000 + "]" * 200_000 + "\n"),
        "line 1",
    ),
    "non-utf8": (
        lambda p: p.write_bytes(STAGING.encode().replace(b"stg-gpu-2", b"stg-gpu-\xe9", 1)),
        f"not UTF-8: byte 0xe9 at line {STAGING.splitlines().index('    - name: stg-gpu-2') + 1}",
    ),
    "utf16": (lambda p: p.write_text(STAGING, encoding="utf-16"), "not UTF-8: byte 0xff at line 1"),
    "broken-yaml": (
        lambda p: p.write_text("config:\n  sovereign-inference:hosts: [\n    a,\n    b\n  x: 1\n"),
        "began at line 2",
    ),
    "nul-byte": (lambda p: p.write_text("config:\n  a: b\x00c\n"), "U+0000 at line 2, column 7"),
    "huge-integer": (lambda p: p.write_text("config:\n  a: " + "9" * 5000 + "\n"), "line 2"),
    "bad-timestamp": (lambda p: p.write_text("config:\n  a: 2025-13-45\n"), "line 2"),
    "unhashable-key": (lambda p: p.write_text("config:\n  ? [a]\n  : 1\n"), "unhashable key"),
    "python-tag": (
        lambda p: p.write_text("config:\n  a: !!python/object/apply:os.system ['id']\n"),
        "line 2",
    ),
    "too-many-values": (
        lambda p: p.write_text("config:\n  a: [" + "1," * 150_000 + "1]\n"),
        "more than",
    ),
    "not-a-mapping": (lambda p: p.write_text("- a\n- b\n"), "expected a mapping"),
    "empty": (lambda p: p.write_text(""), "config: missing"),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_every_broken_file_is_refused_quickly(tmp_path: Path, case: str) -> None:
    write, fragment = FILE_CASES[case]
    path = project(tmp_path) / "stacks" / "Pulumi.case.yaml"
    write(path)
    assert fragment in refusal(path)


def test_yaml_errors_name_where_the_construct_began_and_where_it_broke(tmp_path: Path) -> None:
    path = project(tmp_path) / "stacks" / "Pulumi.broken.yaml"
    path.write_text("config:\n  sovereign-inference:hosts: [\n    a,\n    b\n  x: 1\n")
    text = refusal(path)
    assert "YAML syntax error at line 5" in text
    assert "that began at line 2" in text


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    path = project(tmp_path) / "stacks" / "Pulumi.dup.yaml"
    path.write_text(STAGING + "  sovereign-inference:environment: again\n")
    text = refusal(path)
    assert f"line {len(STAGING.splitlines()) + 1}" in text
    assert "first given at line 4" in text


@pytest.mark.parametrize(
    "make",
    [os.mkfifo, lambda p: p.mkdir(), lambda p: p.symlink_to("/dev/zero")],
    ids=["fifo", "directory", "device"],
)
def test_only_regular_files_are_read(tmp_path: Path, make: Callable[[Path], None]) -> None:
    path = project(tmp_path) / "stacks" / "Pulumi.odd.yaml"
    make(path)
    assert "not a regular file" in refusal(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert "cannot read file" in refusal(tmp_path / "Pulumi.none.yaml")


def test_a_file_just_under_the_limit_is_read(tmp_path: Path) -> None:
    path = project(tmp_path) / "stacks" / "Pulumi.staging.yaml"
    padding = MAX_FILE_BYTES - len(STAGING.encode()) - 3
    path.write_text(STAGING + "#" + "x" * padding + "\n")
    assert path.stat().st_size < MAX_FILE_BYTES
    started = time.process_time()
    assert load_stack_file(path).environment == "staging"
    assert time.process_time() - started < 1.0


def test_aliases_within_the_budget_are_expanded(tmp_path: Path) -> None:
    text = STAGING.replace(
        "      nvme:\n        - id: nvme-SAMSUNG_MZQL21T9HCJR-00A07_S64GNE0T502113",
        "      nvme: &drives\n        - id: nvme-SAMSUNG_MZQL21T9HCJR-00A07_S64GNE0T502113",
    ).replace("    - name: stg-gpu-2\n", "    - name: stg-gpu-2\n      labels: &none {}\n")
    assert "&drives" in text
    path = project(tmp_path) / "stacks" / "Pulumi.staging.yaml"
    path.write_text(
        text.replace(
            "  sovereign-inference:k3s:\n", "  sovereign-inference:k3s:\n    labels: *none\n"
        )
    )
    assert load_stack_file(path).k3s.labels == {}


def test_utf8_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = project(tmp_path) / "stacks" / "Pulumi.staging.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + STAGING.encode())
    assert load_stack_file(path).environment == "staging"


def test_problems_are_capped(tmp_path: Path) -> None:
    path = project(tmp_path) / "stacks" / "Pulumi.many.yaml"
    extras = "".join(f"  sovereign-inference:unknown{i}: 1\n" for i in range(MAX_PROBLEMS + 50))
    path.write_text(STAGING + extras)
    with pytest.raises(StackConfigError) as info:
        load_stack_file(path)
    assert len(info.value.problems) == MAX_PROBLEMS + 1
    assert "more problem(s) not shown" in info.value.problems[-1].message


# --- the inventory a stack names ----------------------------------------------------------------


def lab_project(tmp_path: Path) -> Path:
    path = project(tmp_path) / "stacks" / "Pulumi.lab.yaml"
    path.write_text(LAB)
    return path


def lab_inventory(tmp_path: Path) -> LabInventory:
    lab_dir = tmp_path / ".lab"
    hosts = tuple(lab_host(i, lab_dir, first_port=2300) for i in (1, 2))
    inventory = LabInventory(version=INVENTORY_VERSION, hosts=hosts)
    save_inventory(lab_dir, inventory)
    return inventory


def test_a_missing_inventory_fails_validation_with_the_lab_hint(tmp_path: Path) -> None:
    stack = lab_project(tmp_path)
    text = refusal(stack, require_inventory=True)
    assert text.startswith("inventory: file '.lab/inventory.json' not found")
    assert LAB_UP_HINT in text
    # render for review and the lab tests use the lab stack as a template without a lab
    assert load_stack_file(stack).hosts[0].ssh.host_key is None


def test_a_written_lab_inventory_completes_the_lab_stack(tmp_path: Path) -> None:
    stack = lab_project(tmp_path)
    lab_inventory(tmp_path)  # as `sovereign lab up` writes it, public host keys included
    config = load_stack_file(stack, require_inventory=True)
    assert [h.ssh.port for h in config.hosts] == [2301, 2302]
    assert config.hosts[0].ssh.host_key == "SHA256:+fbNpjwgxE6bDmUPtq8ZNRzo6+gBw5c0jZ3phoOBXOg"


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


INVENTORY_CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    "private-key-inside": (
        lambda p: p.write_text(
            p.read_text().replace(
                '"user": "root"', '"user": "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3Bl"', 1
            )
        ),
        "hosts[0].user: holds key material",
    ),
    "openssh-blob-inside": (
        lambda p: p.write_text(
            p.read_text().replace('"pid": 4001', '"pid": "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU"', 1)
        ),
        "holds key material",
    ),
    "oversize": (lambda p: p.write_text(" " * (MAX_FILE_BYTES + 1)), "larger than"),
    "not-json": (lambda p: p.write_text("{hosts: "), "not JSON"),
    "deep-json": (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "non-utf8": (lambda p: p.write_bytes(b'{"hosts": [{"name": "lab-\xff"}]}'), "not UTF-8"),
    "wrong-shape": (lambda p: p.write_text('{"hosts": 3}'), "expected"),
    "fifo": (_replace_with_fifo, "not a regular file"),
}


@pytest.mark.parametrize("case", INVENTORY_CASES)
def test_a_broken_inventory_is_refused(tmp_path: Path, case: str) -> None:
    stack = lab_project(tmp_path)
    lab_inventory(tmp_path)
    write, fragment = INVENTORY_CASES[case]
    write(tmp_path / ".lab" / "inventory.json")
    text = refusal(stack)
    assert text.startswith("inventory: ")
    assert fragment in text
    assert "b3BlbnNzaC1rZXktdjE" not in text


# --- `sovereign validate` as a user runs it -------------------------------------------------------

CLI_CASES = (
    "oversize",
    "alias-bomb",
    "deep-block-nesting",
    "deep-flow-nesting",
    "non-utf8",
    "broken-yaml",
    "huge-integer",
)


@pytest.mark.parametrize("case", CLI_CASES)
def test_validate_exits_2_without_a_traceback_within_a_second(tmp_path: Path, case: str) -> None:
    write, fragment = FILE_CASES[case]
    path = project(tmp_path) / "stacks" / "Pulumi.case.yaml"
    write(path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = sovereign("validate", str(path))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}: ")
    assert fragment in result.stderr
    # CPU seconds of the whole command, interpreter start included (wall time on a shared
    # machine measures the neighbours); memory: the largest resident set of any child so far
    assert cpu < 1.0, f"{cpu:.2f}s of CPU"
    assert after.ru_maxrss < 256 * 1024, f"{after.ru_maxrss} KiB resident"


def test_validate_names_the_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = project(tmp_path) / "stacks" / "Pulumi.fifo.yaml"
    os.mkfifo(path)
    result = sovereign("validate", str(path))
    assert result.returncode == 2
    assert "not a regular file" in result.stderr


# YAML fragments that change a document's meaning or break it: anchors, tags, flow and block
# markers, escapes, encodings' stray bytes, YAML 1.1 implicit types
_FRAGMENTS = (
    b"&a ", b"*a", b"!!binary ", b"!!set ", b"? ", b"- ", b": ", b"{", b"}", b"[", b"]", b"'",
    b'"', b"\t", b"\\", b"%YAML 1.1\n", b"---\n", b"...\n", b"<<: *a\n", b"\xff", b"\x00",
    b"\xe2\x80\xae", b"#", b"|\n", b">-\n", b"!!python/name:os.system", b"!<tag:x>", b"\n  ",
    b"~", b"0o17", b"0x1F", b"1_000", b".nan", b"2025-01-01", b"12:30:00",
)  # fmt: skip


def test_any_damage_to_a_stack_file_ends_in_a_refusal_or_a_load(tmp_path: Path) -> None:
    """Seeded byte-level damage to a shipped stack: fragments inserted, bytes cut or changed."""
    base = (ROOT / "stacks" / "Pulumi.prod-fra.yaml").read_bytes()
    path = project(tmp_path) / "stacks" / "Pulumi.damaged.yaml"
    rng = random.Random(20261128)
    for _ in range(300):
        damaged = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(damaged))
            how = rng.random()
            if how < 0.4:
                damaged[at:at] = rng.choice(_FRAGMENTS)
            elif how < 0.7:
                del damaged[at : at + rng.randint(1, 20)]
            else:
                damaged[at] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        started = time.process_time()
        # anything but a StackConfigError fails the test: validate would print a traceback
        with contextlib.suppress(StackConfigError):
            load_stack_file(path)
        assert time.process_time() - started < 1.0
