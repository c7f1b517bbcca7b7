#!/usr/bin/env bash
# What a user gets from the built wheel (issue 18): build it, install it into a fresh virtual
# environment as an unprivileged user, with no system WordNet or Java in use
# (BRAINHARNESS_PIP_ONLY=1), and run `brainharness selftest --json`, `brainharness demo`, the
# seed-000 caption metrics and the caption-metric tests there. `pip show -f` of that install
# must list only the brainharness namespace, its dist-info and its console script.
#
# As root (CI) it runs the user steps as $BRAINHARNESS_CI_USER (default bhci, created with
# useradd if missing) through runuser; as any other user, as that user. Downloads go to a pip
# cache that persists between runs ($BRAINHARNESS_PIP_CACHE), so torch is fetched once.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CI_USER=${BRAINHARNESS_CI_USER:-bhci}
PIP_CACHE=${BRAINHARNESS_PIP_CACHE:-/var/tmp/brainharness-pip-cache}
START=$SECONDS
step() { echo "wheel-check: [$((SECONDS - START))s] $*"; }

WORK=$(mktemp -d /tmp/brainharness-wheel-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$PIP_CACHE"

step "building the wheel (python -m build)"
python3 -m build --wheel --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/brainharness-*.whl)
step "built $(basename "$WHEEL")"

# The caption tests and their conftest, next to (not inside) the installed package.
mkdir -p "$WORK/check/tests"
cp tests/conftest.py tests/test_caption_metrics.py tests/test_caption_runtime.py "$WORK/check/tests/"
cp constraints.txt "$WORK/check/"

if [ "$(id -u)" -eq 0 ]; then
    id -u "$CI_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$CI_USER"
    chown -R "$CI_USER" "$WORK" "$PIP_CACHE"
    chmod 755 "$WORK"
    as_user() { runuser -u "$CI_USER" -- "$@"; }
else
    as_user() { "$@"; }
fi
# An interpreter the user can run (root's pyenv may sit in an unreadable home).
PY=""
for cand in "$(command -v python3)" /usr/bin/python3; do
    if [ -n "$cand" ] && as_user "$cand" -c "import venv, ensurepip" >/dev/null 2>&1; then PY=$cand; break; fi
done
[ -n "$PY" ] || { echo "wheel-check: ERROR: no python3 with venv that $CI_USER can run" >&2; exit 1; }

# A clean environment for the user: fresh HOME, no caches, offline model hubs.
USER_ENV=(env -i "HOME=$WORK/home" "PATH=$WORK/venv/bin:/usr/local/bin:/usr/bin:/bin" "LANG=C.UTF-8"
          "PIP_CACHE_DIR=$PIP_CACHE" "PIP_DISABLE_PIP_VERSION_CHECK=1" "BRAINHARNESS_PIP_ONLY=1"
          "HF_HUB_OFFLINE=1" "TRANSFORMERS_OFFLINE=1" "HF_DATASETS_OFFLINE=1" "HF_EVALUATE_OFFLINE=1"
          "WANDB_MODE=offline" "OMP_NUM_THREADS=1")
# The index and mirror settings pip has here (local wheel folders, extra indexes) carry over.
while IFS='=' read -r name value; do
    case $name in PIP_INDEX_URL|PIP_EXTRA_INDEX_URL|PIP_FIND_LINKS|PIP_CERT|PIP_DEFAULT_TIMEOUT) USER_ENV+=("$name=$value");; esac
done < <(env)
run() { as_user "${USER_ENV[@]}" "$@"; }
run mkdir -p "$WORK/home"

step "fresh venv ($PY) and pip install '<wheel>[captions,test]' as $(as_user id -un)"
run "$PY" -m venv "$WORK/venv"
t0=$SECONDS
run "$WORK/venv/bin/python" -m pip install -q -c "$WORK/check/constraints.txt" "$WHEEL[captions,test]"
step "installed in $((SECONDS - t0))s"

step "pip show -f brainharness: only the brainharness namespace"
run "$WORK/venv/bin/python" -m pip show -f brainharness | awk '
    /^Files:/ {files = 1; next}
    files && NF {n++; f = $1
                 if (f !~ /^brainharness\// && f !~ /^brainharness-[^\/]*\.dist-info\// && f !~ /bin\/brainharness$/)
                     {print "wheel-check: ERROR: outside the namespace: " f; bad = 1}}
    END {if (!n) {print "wheel-check: ERROR: pip show -f listed no files"; bad = 1}
         else print "wheel-check: " n " files, all under brainharness/"; exit bad}'

cd "$WORK/check"
step "brainharness selftest --json"
run "$WORK/venv/bin/brainharness" selftest --json
step "brainharness demo"
run "$WORK/venv/bin/brainharness" demo --out "$WORK/check/leaderboard_out" -q >"$WORK/demo.log" 2>&1 \
    || { tail -40 "$WORK/demo.log"; exit 1; }
tail -5 "$WORK/demo.log"
for f in encoding.md retrieval.md index.html; do
    [ -s "$WORK/check/leaderboard_out/$f" ] || { echo "wheel-check: ERROR: demo wrote no $f" >&2; exit 1; }
done
step "seed-000 caption metrics (pip-only Java and WordNet)"
run "$WORK/venv/bin/python" -m brainharness.metrics.caption_status
step "caption-metric tests"
run "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider tests
step "done in $((SECONDS - START))s"
