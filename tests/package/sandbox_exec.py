"""Apply the unit's system call sandbox to this process, then exec a command.

    sandbox_exec.py UNIT_FILE COMMAND [ARGS...]

Reads from UNIT_FILE, and applies as systemd would (without systemd running):
  SystemCallFilter=        allow list: the groups expanded by `systemd-analyze syscall-filter`,
                           lines applied in order (a leading ~ removes), everything else fails
                           with SystemCallErrorNumber=
  SystemCallArchitectures=native   (a seccomp filter for the native architecture only)
  RestrictAddressFamilies= socket(2) only for the listed families
  MemoryDenyWriteExecute=yes       the kernel's PR_SET_MDWE (no mapping may gain PROT_EXEC)
The capabilities, no_new_privs and mounts are applied around it by the test (setpriv, unshare).
Needs no_new_privs already set (setpriv --no-new-privs) to install the filter unprivileged.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import seccomp

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def unit_values(unit_text: str, key: str) -> list[str]:
    """All values of `key` in the unit, in order."""
    values = []
    for raw_line in unit_text.splitlines():
        line = raw_line.strip()
        if line.startswith(key + "="):
            values.append(line[len(key) + 1 :])
    return values


def expand(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of `name`: a call itself, or an @group expanded recursively."""
    if not name.startswith("@"):
        return {name}
    seen = set() if seen is None else seen
    seen.add(name)
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for raw_line in listing.splitlines()[1:]:
        entry = raw_line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith("@"):
            if entry not in seen:
                calls |= expand(entry, seen)
        else:
            calls.add(entry)
    return calls


def allowed_syscalls(filter_lines: list[str]) -> set[str]:
    """The allow list that SystemCallFilter= lines describe (the first must be an allow list)."""
    allowed: set[str] = set()
    for line in filter_lines:
        remove = line.startswith("~")
        names: set[str] = set()
        for word in line.removeprefix("~").split():
            names |= expand(word)
        allowed = allowed - names if remove else allowed | names
    return allowed


def apply_sandbox(unit_text: str) -> None:
    if unit_values(unit_text, "MemoryDenyWriteExecute") == ["yes"]:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")
    filter_lines = unit_values(unit_text, "SystemCallFilter")
    if not filter_lines:
        return
    error_name = (unit_values(unit_text, "SystemCallErrorNumber") or ["EPERM"])[-1]
    syscall_filter = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, error_name)))
    families = [
        int(getattr(socket, family))
        for line in unit_values(unit_text, "RestrictAddressFamilies")
        for family in line.split()
    ]
    for name in sorted(allowed_syscalls(filter_lines)):
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) == -1:
            continue  # unknown to libseccomp: systemd skips these too
        if name == "socket" and families:
            for family in families:
                syscall_filter.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, family))
        else:
            syscall_filter.add_rule(seccomp.ALLOW, name)
    syscall_filter.load()


def main() -> None:
    unit_file, *command = sys.argv[1:]
    apply_sandbox(Path(unit_file).read_text())
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
