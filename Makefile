# The README's two set-up commands: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install -q -c constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test system-deps bench

system-deps:            ## WordNet (METEOR) and Java (COCO metrics) from Debian's packages
	bash scripts/system-deps.sh

demo: system-deps       ## install, then run the embedded demo and print/write the leaderboard
	$(PIP) -e .
	brainharness demo

test: system-deps       ## install with test extras, then run the offline test suite
	$(PIP) -e ".[test]"
	$(PYTHON) -m pytest -q -p no:cacheprovider

bench:                  ## ridge and backbone benchmarks (quick sizes)
	$(PYTHON) bench/ridge.py --quick
	$(PYTHON) bench/backbones.py --quick
