#!/usr/bin/env bash
# Make this Debian 12 machine able to run, build or test xdp-ip-counter from the checkout.
#
#   packaging/bootstrap.sh [run|build|test]     install what that needs (default: test)
#   packaging/bootstrap.sh --print [PROFILE]    print what it needs, one dependency a line
#
#   run     the daemon: packaging/debian/control's Depends, the Python requirements of
#           pyproject.toml (as dh-python maps them to Debian packages), the kernel headers
#   build   run + the .deb's Build-Depends (from packaging/debian/control) + build-essential
#   test    build + the tools the tests and benchmarks run (listed below) + ruff in .venv
#
# Nothing here repeats a list kept elsewhere: the package's dependencies are read from
# packaging/debian/control and pyproject.toml, which the .deb is built from. Only the test tools
# are listed here, once; tests/package/test_bootstrap.py fails when a command or module that a
# test or benchmark uses comes from a package this script does not name.
#
# Idempotent and quick when nothing is missing (./dev runs it before every command): apt-get
# decides in one simulated `satisfy` whether anything is missing, and `apt-get update` runs only
# when something is. Needs root only when it has something to install.
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
control="${repo_dir}/packaging/debian/control"
ruff_version="0.17.6"
# Debian's tools with Debian's Python, whatever else is first on the caller's PATH.
export PATH="/usr/sbin:/usr/bin:/sbin:/bin"

say() { printf 'bootstrap: %s\n' "$*" >&2; }

# What the bootstrap itself needs before it can read pyproject.toml the way dh-python does.
bootstrap_packages=(
    python3                    # Debian's Python: the only one with bcc (python3-bpfcc)
    dh-python                  # maps pyproject.toml's requirements to Debian packages
)

# The tools the tests and the benchmarks run (commands and Python modules), each with its
# reason. A package that only pulls in another one is not enough: name the one that ships the
# command (tests/package/test_bootstrap.py checks it).
test_packages=(
    python3-pytest             # the test runner
    python3-venv               # the development venv (ruff)
    python3-pip                # ruff into the venv; the wheel test's pip install
    python3-wheel              # building the wheel without network (pip --no-build-isolation)
    python3-scapy              # crafted frames checked against scapy's dissectors
    python3-seccomp            # the unit's system call filter, applied in the hardening test
    bpftool                    # inspecting loaded programs and maps
    iproute2                   # ip netns / veth for the end-to-end tests
    netsniff-ng                # trafgen: packet load in tests and benchmarks
    nftables                   # nft: the benchmark's firewall baseline
    prometheus                 # promtool, and a real Prometheus scraping the daemon
    curl                       # HTTP requests from inside network namespaces
    openssl                    # test certificates for TLS
    procps                     # sysctl, w
    lintian                    # checking the .deb
    systemd                    # systemd-analyze verify / security
    ansible                    # the deployment role (with its collections)
    ansible-core               # ansible-playbook
    ansible-lint
    debootstrap                # the install test's root, the fresh-root check, VM images
    qemu-system-x86            # fleet tests: Debian VMs
    qemu-utils                 # qemu-img: copy-on-write VM disks
    e2fsprogs                  # mkfs.ext4 for VM images
    openssh-client             # ssh, ssh-keygen: reaching the test VMs
    git                        # the fresh-root check clones the committed HEAD
)

# The dependency fields of packaging/debian/control, one dependency a line, without
# substitution variables (${python3:Depends}: those come from pyproject.toml, below).
# $1: the field (Depends, Build-Depends, ...); $2: the stanza (source or binary).
control_field() {
    local field="$1" stanza="$2"
    awk -v field="${field}" -v stanza="${stanza}" '
        /^#/ { next }
        /^$/ { paragraph++; next }
        (stanza == "source") != (paragraph == 0) { next }
        /^[^ \t]/ { on = (tolower($0) ~ "^" tolower(field) ":") ; if (on) sub(/^[^:]*:/, "") }
        on { print }
    ' "${control}" | tr '\n' ' ' | tr ',' '\n' \
        | sed -e 's/\${[^}]*}//g' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' | grep -v '^$' || true
}

# The Python requirements of pyproject.toml as dh-python maps them (needs python3, dh-python).
python_depends() {
    /usr/bin/python3 "${repo_dir}/packaging/python-depends.py" "${repo_dir}/pyproject.toml"
}

kernel_release="$(uname -r)"

# The dependencies of a profile, one a line; $2=1 includes the Python requirements.
profile_depends() {
    local profile="$1" with_python="$2"
    printf '%s\n' "${bootstrap_packages[@]}"
    control_field Depends binary
    # bcc compiles the XDP program at start-up against the running kernel's headers. Debian's
    # headers only when the running kernel has none of its own (see the link made below).
    [[ -e "/lib/modules/${kernel_release}/build" ]] || echo linux-headers-amd64
    if [[ "${with_python}" == 1 ]]; then
        python_depends
    fi
    if [[ "${profile}" == build || "${profile}" == test ]]; then
        echo build-essential  # dpkg-buildpackage requires it besides Build-Depends
        control_field Build-Depends source
        control_field Build-Depends-Indep source
    fi
    if [[ "${profile}" == test ]]; then
        printf '%s\n' "${test_packages[@]}"
    fi
}

apt_updated=0
# Install whatever of these dependencies (one a line on stdin) the machine lacks.
satisfy() {
    local depends=() line
    while IFS= read -r line; do depends+=("${line}"); done
    local joined
    joined="$(IFS=,; echo "${depends[*]}")"
    # A simulated satisfy answers from dpkg's status alone when everything is there; it fails
    # or lists "Inst" lines when something is missing (or apt has no lists yet).
    local plan
    if plan="$(apt-get -s -qq satisfy "${joined}" 2>/dev/null)" && ! grep -q '^Inst ' <<<"${plan}"; then
        return 0
    fi
    if (( EUID != 0 )); then
        say "missing Debian packages for: ${joined}"
        say "run this script as root (or: sudo apt-get satisfy '${joined}')"
        exit 1
    fi
    say "installing what is missing of: ${joined}"
    # Debian starts a service as soon as its package is installed. The tests start their own
    # Prometheus on a port of their own choosing; a system-wide one must not be left running.
    local policy_rc="/usr/sbin/policy-rc.d" policy_rc_ours=0
    if [[ ! -e "${policy_rc}" ]]; then
        printf '#!/bin/sh\n# written by xdp-ip-counter bootstrap, removed after apt-get\nexit 101\n' \
            >"${policy_rc}"
        chmod 755 "${policy_rc}"
        policy_rc_ours=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    local prometheus_before
    prometheus_before="$(dpkg-query -W -f='${db:Status-Abbrev}' prometheus 2>/dev/null || true)"
    if (( ! apt_updated )); then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        apt_updated=1
    fi
    apt-get -o DPkg::Lock::Timeout=600 satisfy -y -qq --no-install-recommends "${joined}"
    if [[ "${prometheus_before}" != "ii " ]] && dpkg-query -W prometheus >/dev/null 2>&1; then
        say "disabling the system-wide prometheus.service (the tests run their own)"
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now --quiet prometheus.service
        else
            systemctl disable --quiet prometheus.service  # no systemd running: links only
        fi
    fi
    if (( policy_rc_ours )); then
        rm -f "${policy_rc}"
        trap - EXIT
    fi
}

case "${1:-test}" in
    --print)
        profile="${2:-test}"
        mode=print
        ;;
    run | build | test)
        profile="${1:-test}"
        mode=install
        ;;
    *)
        sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
        exit 2
        ;;
esac
case "${profile}" in
    run | build | test) ;;
    *) say "unknown profile '${profile}': run, build or test"; exit 2 ;;
esac

if [[ "${mode}" == print ]]; then
    profile_depends "${profile}" 1
    exit 0
fi

# Two rounds: the first brings Python and dh-python, with which the second reads pyproject.toml.
profile_depends "${profile}" 0 | satisfy
python_list="$(python_depends)"
satisfy <<<"${python_list}"

# bcc looks for /lib/modules/$(uname -r)/build. A kernel built outside Debian (a VM's or a
# container host's) ships no headers package; Debian's newest headers do instead, because the
# XDP program uses only UAPI structures (ethhdr, iphdr, ipv6hdr, tcphdr, udphdr, xdp_md), which
# are stable across kernel versions.
modules_dir="/lib/modules/${kernel_release}"
if [[ ! -e "${modules_dir}/build" ]]; then
    headers_arch="$(find /usr/src -maxdepth 1 -name 'linux-headers-*-amd64' | sort -V | tail -n 1)"
    if [[ -z "${headers_arch}" ]]; then
        say "no kernel headers for ${kernel_release} and none from Debian in /usr/src"
        exit 1
    fi
    headers_common="${headers_arch%-amd64}-common"
    say "no headers for kernel ${kernel_release}: linking ${modules_dir}/build -> ${headers_arch}" \
        "(the XDP program uses only UAPI structures, stable across kernels)"
    mkdir -p "${modules_dir}"
    ln -sfn "${headers_arch}" "${modules_dir}/build"
    [[ -d "${headers_common}" ]] && ln -sfn "${headers_common}" "${modules_dir}/source"
fi

[[ "${profile}" == test ]] || exit 0

# The development venv holds only the tools that are not Debian packages (ruff). It is made from
# /usr/bin/python3 with --system-site-packages because bcc's Python bindings (python3-bpfcc)
# exist only as a Debian package for Debian's Python: a venv from another Python, or one without
# the system site packages, cannot import bcc.
venv_dir="${repo_dir}/.venv"
if [[ ! -x "${venv_dir}/bin/python" ]]; then
    say "creating the development venv ${venv_dir} (Debian's Python, system site packages)"
    /usr/bin/python3 -m venv --system-site-packages "${venv_dir}"
fi
if [[ "$("${venv_dir}/bin/ruff" --version 2>/dev/null)" != "ruff ${ruff_version}" ]]; then
    say "installing ruff ${ruff_version} into ${venv_dir}"
    "${venv_dir}/bin/python" -m pip install --quiet --disable-pip-version-check \
        "ruff==${ruff_version}"
fi
