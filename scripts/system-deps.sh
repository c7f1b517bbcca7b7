#!/usr/bin/env bash
# System (non-pip) dependencies of brainharness, installed with Debian's apt.
#
#   * wordnet-base, wordnet-sense-index: the WordNet 3.0 database under /usr/share/wordnet,
#     which NLTK's METEOR needs for synonym matching (harness/caption_metrics.py copies it,
#     with the `lexnames` file Debian lacks, into an NLTK data folder under the harness cache
#     on first use — NLTK refuses symlinked/hard-linked data; nothing is downloaded);
#   * a Java runtime (default-jre-headless), only when no `java` is on PATH: pycocoevalcap's
#     METEOR 1.5 jar and Stanford PTB tokenizer run on it.
#
# Idempotent: does nothing (and needs no root, no network) when everything is there.
# Run it before `pip install` (README set-up and CI do). Exits non-zero, with a message,
# when something is missing and apt-get is unavailable or fails.
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

if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: all present (${PACKAGES[*]}, java)"
    exit 0
fi

echo "system-deps: installing ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: ERROR: apt-get is not available; install these by hand: ${missing[*]}" >&2
    echo "  (WordNet 3.0 dict files: data.*, index.*, *.exc under /usr/share/wordnet;" \
         "or set BRAINHARNESS_WORDNET_DIR to a WordNet 3.0 dict folder)" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        echo "system-deps: ERROR: not root and no sudo; run as root: apt-get install -y ${missing[*]}" >&2
        exit 1
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
