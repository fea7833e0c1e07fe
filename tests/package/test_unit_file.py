"""systemd/xdp-ip-counter.service: what it promises, systemd-analyze verify, and its exposure."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .deb import REPO

UNIT_PATH = REPO / "systemd" / "xdp-ip-counter.service"
PROGRAM = "/usr/bin/xdp-ip-counter"
# systemd-analyze security's "Overall exposure level" (0 best, 10 worst), as the README reports
# it; a change to the unit that makes it worse fails here.
MAX_EXPOSURE = 2.3


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every Key=value of a unit file, all values of repeated keys in order."""
    settings: dict[str, list[str]] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_a_notify_service_with_watchdog_reload_and_restart() -> None:
    settings = unit_settings(UNIT_PATH.read_text())
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["ExecStart"] == ["/usr/bin/xdp-ip-counter"]
    # the file is checked before the SIGHUP: a bad one fails `systemctl reload` (the fleet
    # test sees it under systemd)
    assert settings["ExecReload"] == [
        "/usr/bin/xdp-ip-counter --check-config",
        "/bin/kill -HUP $MAINPID",
    ]
    assert settings["WatchdogSec"] == ["30s"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings["WantedBy"] == ["multi-user.target"]


def test_unit_keeps_only_the_capabilities_it_needs() -> None:
    settings = unit_settings(UNIT_PATH.read_text())
    assert settings["CapabilityBoundingSet"] == ["CAP_BPF CAP_PERFMON CAP_NET_ADMIN"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ProtectHome"] == ["yes"]
    assert settings["PrivateTmp"] == ["yes"]


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart= and ExecReload= exist; the unit names the installed path,
    # so point it at a stand-in here (the install test verifies the installed unit with the
    # real program).
    program = tmp_path / "xdp-ip-counter"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    text = UNIT_PATH.read_text()
    assert text.count(f"={PROGRAM}") == 2  # ExecStart=, ExecReload=
    unit = tmp_path / UNIT_PATH.name
    unit.write_text(text.replace(f"={PROGRAM}", f"={program}"))
    result = subprocess.run(
        ["systemd-analyze", "verify", unit.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and output == "", f"systemd-analyze verify:\n{output}"


def security_exposure(unit: Path) -> tuple[float, str]:
    """systemd-analyze security --offline=true: the overall exposure and the full table."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert result.returncode == 0 and match, f"systemd-analyze security:\n{output}"
    return float(match.group(1)), output


def test_systemd_analyze_security_exposure_stays_low() -> None:
    exposure, table = security_exposure(UNIT_PATH)
    print(f"systemd-analyze security: overall exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, table


def test_security_check_notices_a_weaker_unit(tmp_path: Path) -> None:
    """The exposure check can fail: the unit without its hardening scores far worse."""
    weak = tmp_path / UNIT_PATH.name
    weak.write_text(
        "\n".join(
            line
            for line in UNIT_PATH.read_text().splitlines()
            if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capab"))
        )
        + "\n"
    )
    exposure, _ = security_exposure(weak)
    assert exposure > MAX_EXPOSURE + 3
