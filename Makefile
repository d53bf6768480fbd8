# The two set-up commands: `make demo` (install, then the main job on a tiny bundled example, CPU,
# offline) and `make test` (install, then the test suite; `make test-fast` leaves out the slow tests).
PY := .venv/bin/python
# .pyc files are written on first import (install.sh does not compile every file of every package).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test test-fast bench clean

install:
	./install.sh

demo: install
	$(PY) scripts/demo.py

# -n auto: one pytest-xdist worker per core; --dist loadgroup keeps each xdist group (tests/conftest.py)
# on one worker. --durations=15 lists the slowest tests. The browser test of app.py runs when Debian's
# chromium is installed (.ci/run installs it when it can) and skips otherwise; PMRF_REQUIRE_BROWSER=1
# (which .ci/run sets once Chromium is there) turns that skip into a failure.
test: install
	$(PY) -m pytest -q -n auto --dist loadgroup --durations=15

# The same without the tests marked slow (@pytest.mark.slow: more than about 8 s alone on a 2-core CPU).
test-fast: install
	$(PY) -m pytest -q -n auto --dist loadgroup --durations=15 -m "not slow"

bench: install
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/inference.py

clean:
	rm -rf .pytest_cache demo_output
