# The README's two set-up commands: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install -q -c constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test system-deps wheel-check bench

system-deps:            ## optional, root: the system WordNet/Java the tests compare against, the test browser
	bash scripts/system-deps.sh

demo:                   ## pip only (no root): install, then run the embedded demo and print/write the leaderboard
	$(PIP) -e .
	brainharness demo

test: system-deps       ## install with test extras, then run the offline test suite
	$(PIP) -e ".[test,captions]"
	$(PYTHON) -m pytest -q -p no:cacheprovider

wheel-check:            ## build the wheel, install it as an unprivileged user in a fresh venv, run it there
	bash scripts/wheel-check.sh

bench:                  ## ridge and backbone benchmarks (quick sizes)
	$(PYTHON) bench/ridge.py --quick
	$(PYTHON) bench/backbones.py --quick
