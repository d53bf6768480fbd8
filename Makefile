# The two set-up commands: `make demo` (install, then the main job on a tiny bundled example, CPU,
# offline) and `make test` (install, then the test suite).
PY := .venv/bin/python

.PHONY: install demo test bench clean

install:
	./install.sh

demo: install
	$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/inference.py

clean:
	rm -rf .pytest_cache demo_output
