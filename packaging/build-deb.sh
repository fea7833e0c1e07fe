#!/usr/bin/env bash
# Build xdp-ip-counter_<version>_all.deb, the Debian way (dpkg-buildpackage, debhelper, pybuild).
#
#   packaging/build-deb.sh [OUTPUT_DIR]     (default: build/ in the checkout)
#
# The Debian packaging lives in packaging/debian/ so that the checkout stays a plain Python
# project; this script lays the sources out in a temporary directory with debian/ at the top,
# builds there (nothing is written into the checkout but the .deb) and copies the .deb out.
# Prints the path of the .deb as its last line.
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
output_dir="$(mkdir -p "${1:-${repo_dir}/build}" && cd "${1:-${repo_dir}/build}" && pwd)"

# Debian's tools with Debian's Python, whatever else is first on the caller's PATH.
export PATH="/usr/sbin:/usr/bin:/sbin:/bin"

say() { printf 'build-deb: %s\n' "$*" >&2; }

version="$(dpkg-parsechangelog -l "${repo_dir}/packaging/debian/changelog" -S Version)"
python_version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "${repo_dir}/xdp_ip_counter/__init__.py")"
if [[ "${version}" != "${python_version}" ]]; then
    say "packaging/debian/changelog says ${version}, xdp_ip_counter/__init__.py says" \
        "${python_version}: add a changelog entry (dch -v ${python_version}) or fix the version"
    exit 1
fi

for required in pyproject.toml README.md packaging/config.toml systemd/xdp-ip-counter.service; do
    if [[ ! -f "${repo_dir}/${required}" ]]; then
        say "${required} is missing: the package is built from it"
        exit 1
    fi
done

work_dir="$(mktemp -d -t xdp-ip-counter-deb.XXXXXX)"
trap 'rm -rf "${work_dir}"' EXIT
source_dir="${work_dir}/xdp-ip-counter-${version}"
mkdir -p "${source_dir}"

# Only what the package is built from; no caches, no venv, no build output.
tar -C "${repo_dir}" -c --exclude='__pycache__' --exclude='*.pyc' \
    pyproject.toml README.md xdp_ip_counter bpf systemd packaging/config.toml packaging/prometheus \
    | tar -C "${source_dir}" -x
cp -r "${repo_dir}/packaging/debian" "${source_dir}/debian"

say "building xdp-ip-counter ${version} in ${work_dir}"
build_log="${output_dir}/xdp-ip-counter_${version}_build.log"
if ! (cd "${source_dir}" && dpkg-buildpackage -us -uc -b) >"${build_log}" 2>&1; then
    tail -n 40 "${build_log}" >&2
    say "dpkg-buildpackage failed; full log: ${build_log}"
    exit 1
fi

deb_name="xdp-ip-counter_${version}_all.deb"
cp "${work_dir}/${deb_name}" "${output_dir}/${deb_name}"
say "built ${output_dir}/${deb_name} (log: ${build_log})"
echo "${output_dir}/${deb_name}"
