"""The command line's defaults are the ``Settings`` field defaults, declared once."""

from __future__ import annotations

from pathlib import Path

import pytest
from sovereign_gateway.settings import Settings, SettingsError, parse_settings


def test_every_flag_left_out_takes_the_settings_field_default() -> None:
    assert parse_settings(["--routes", "r.json"]) == Settings(routes=Path("r.json"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--body-timeout", "0"], "--body-timeout: expected a positive number of seconds"),
        (["--max-held-bytes", "1k"], "--max-held-bytes: expected a positive number of bytes"),
        (
            ["--max-body-bytes", "2048", "--max-held-bytes", "1024"],
            r"--max-held-bytes: expected at least --max-body-bytes \(2048\), got '1024'",
        ),
        (
            ["--probe-failure-threshold", "0"],
            "--probe-failure-threshold: expected a positive whole",
        ),
    ],
)
def test_a_bad_body_or_budget_flag_is_refused_naming_it(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_settings(["--routes", "r.json", *argv])


def test_the_help_shows_each_default_as_its_settings_field_declares_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--help"])
    # argparse wraps lines: compare with the whitespace folded
    shown = " ".join(capsys.readouterr().out.split())
    declared = Settings(routes=Path("r.json"))
    for name in ("listen", "max_body_bytes", "max_held_bytes", "body_timeout", "max_peer_count"):
        flag = "--" + name.replace("_", "-")
        assert f"(default: {getattr(declared, name)})" in shown.split(f" {flag} ", 1)[1], flag
