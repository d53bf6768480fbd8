# The two set-up commands: `make demo` (install, then the main job on a tiny bundled example, CPU,
# offline) and `make test` (install, then the test suite).
PY := .venv/bin/python
# .pyc files are written on first import (install.sh does not compile every file of every package).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test bench clean

install:
	./install.sh

demo: install
	$(PY) scripts/demo.py

# -n auto: one pytest-xdist worker per core; --dist loadgroup keeps each xdist group (tests/conftest.py)
# on one worker. --durations=15 lists the slowest tests.
test: install
	$(PY) -m pytest -q -n auto --dist loadgroup --durations=15

bench: install
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/inference.py

clean:
	rm -rf .pytest_cache demo_output
