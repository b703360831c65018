# Everything runs inside .venv, created on first use from the pinned pyproject.toml: `.[test]`
# is all of it (the server and plots extras, grpcio-tools for `make proto`, the test tools).
# uv installs it (pinned, itself installed by pip): the same versions pip resolves, byte-compiled
# as pip leaves them, in 61 s where pip took 103 s (empty caches, this 2-core machine; CI pays it
# every run).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO_OUT := out/demo

.PHONY: demo evaluate serve test test-costs zoo proto bench train-demo clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==0.13.10
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[test]'
	touch $@

demo: $(INSTALLED)
	rm -rf $(DEMO_OUT)
	$(BIN)/camserve export demo --repo $(DEMO_OUT)/models --name shapes
	$(BIN)/python examples/demo.py $(DEMO_OUT)/models --out $(DEMO_OUT)/overlays

# Which CAM method explains the demo model best: faithfulness and localisation on held-out
# shapes with their boxes (out/demo/evaluation: evaluation.md, curves.png, grid.png).
evaluate: $(INSTALLED)
	test -d $(DEMO_OUT)/models/shapes || $(BIN)/camserve export demo --repo $(DEMO_OUT)/models --name shapes
	$(BIN)/python examples/evaluate_demo.py $(DEMO_OUT)/models --out $(DEMO_OUT)/evaluation

# A long-running server on the demo model: localhost:8500, metrics on :8501.
serve: $(INSTALLED)
	test -d models/shapes || $(BIN)/camserve export demo --repo models --name shapes
	$(BIN)/camserve serve --repo models

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

# The suite with each file's cost measured (tests/README.md's table; tests/costs.json orders the files).
test-costs: $(INSTALLED)
	$(BIN)/python -m pytest -q --suite-stats tests/costs.json

# The zoo with one keras.applications constructor a family too (minutes; not in `make test`).
zoo: $(INSTALLED)
	CAMSERVE_APPLICATIONS=1 $(BIN)/python -m pytest -q tests/test_zoo.py --durations=0

# Regenerate the gRPC stubs from proto/ (committed; never edited by hand).
proto: $(INSTALLED)
	$(BIN)/python proto/generate.py

bench: $(INSTALLED)
	$(BIN)/python benchmarks/export_throughput.py
	$(BIN)/python benchmarks/server_throughput.py
	$(BIN)/python benchmarks/native_vs_kserve.py

# Re-train the bundled demo model (deterministic; the result is committed).
train-demo: $(INSTALLED)
	$(BIN)/python -m camserve.demo.train

clean:
	rm -rf out .pytest_cache
