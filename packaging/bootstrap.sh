#!/usr/bin/env bash
# Make this Debian 12 machine able to run and test xdp-ip-counter from the checkout.
#
# Idempotent and quick when nothing is missing (./dev runs it before every command): one
# dpkg-query call decides what to install, and `apt-get update` runs only when something is.
# Needs root only when it has something to install.
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ruff_version="0.17.6"

say() { printf 'bootstrap: %s\n' "$*" >&2; }

# Debian packages, each with the reason it is here.
required_packages=(
    python3-bpfcc              # bcc: compiles and loads the XDP program (Debian's Python only)
    bpftool                    # inspecting loaded programs and maps in tests
    iproute2                   # ip netns / veth for the end-to-end tests
    python3-prometheus-client  # /metrics exposition
    python3-sdnotify           # Type=notify, watchdog
    python3-tomli              # TOML config on Python < 3.11 (harmless on 3.11)
    python3-numpy              # map snapshots as structured arrays
    python3-venv               # the development venv (ruff)
    python3-pytest             # the test runner
    python3-scapy              # crafted frames for the kernel tests
    python3-seccomp            # the unit's system call filter, applied in the hardening test
    netsniff-ng                # trafgen: packet load in tests and benchmarks
    nftables                   # firewall interplay tests
    prometheus                 # a real Prometheus scraping the daemon in the e2e tests
    debhelper                  # building the .deb
    dh-python
    pybuild-plugin-pyproject
    python3-setuptools
    help2man                   # the manual page, from --help, at package build time
    lintian                    # checking the .deb
    systemd                    # systemd-analyze verify / security
    ansible                    # the deployment role
    ansible-lint
    qemu-system-x86            # fleet tests: Debian VMs
    qemu-utils                 # qemu-img: copy-on-write VM disks
    debootstrap                # install test root and VM images
    e2fsprogs                  # mkfs.ext4 for VM images
    openssh-client             # reaching the test VMs
    python3-bcrypt             # basic-auth password hashes in the web configuration
    python3-yaml               # the web configuration file (Prometheus web-config format)
    openssl
    curl
)

# bcc compiles the XDP program at start-up against the kernel headers of the running kernel.
# Install Debian's headers only when the running kernel has none of its own.
kernel_release="$(uname -r)"
if [[ ! -e "/lib/modules/${kernel_release}/build" ]]; then
    required_packages+=(linux-headers-amd64)
fi

# One dpkg-query for all of them; a package dpkg has never heard of prints no line at all.
declare -A package_status=()
while read -r package status; do
    package_status["${package}"]="${status}"
done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${required_packages[@]}" 2>/dev/null || true)
missing_packages=()
for package in "${required_packages[@]}"; do
    [[ "${package_status[${package}]:-}" == "ii" ]] || missing_packages+=("${package}")
done

if (( ${#missing_packages[@]} > 0 )); then
    if (( EUID != 0 )); then
        say "missing Debian packages: ${missing_packages[*]}"
        say "run this script as root (or: sudo apt-get install ${missing_packages[*]})"
        exit 1
    fi
    say "installing missing Debian packages: ${missing_packages[*]}"
    # Debian starts a service as soon as its package is installed. The tests start their own
    # Prometheus on a port of their own choosing; a system-wide one must not be left running.
    policy_rc="/usr/sbin/policy-rc.d"
    policy_rc_ours=0
    if [[ ! -e "${policy_rc}" ]]; then
        printf '#!/bin/sh\n# written by xdp-ip-counter bootstrap, removed after apt-get\nexit 101\n' \
            >"${policy_rc}"
        chmod 755 "${policy_rc}"
        policy_rc_ours=1
    fi
    remove_policy_rc() { if (( policy_rc_ours )); then rm -f "${policy_rc}"; fi; }
    trap remove_policy_rc EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing_packages[@]}"
    if [[ " ${missing_packages[*]} " == *" prometheus "* ]]; then
        say "disabling the system-wide prometheus.service (the tests run their own)"
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now --quiet prometheus.service
        else
            systemctl disable --quiet prometheus.service  # no systemd running: links only
        fi
    fi
    remove_policy_rc
    trap - EXIT
fi

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
