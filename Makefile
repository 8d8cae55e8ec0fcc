# Both targets bootstrap a virtualenv in .venv on first use; nothing needs to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kvroute-installed
SOURCES := $(wildcard router/src operator/src simulator/src bench/src)

.PHONY: demo test lint typecheck unit venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,peers]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/kvroute demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy $(SOURCES)

test: lint typecheck k8s-tools dynamo
	$(BIN)/pytest

# helm and kubectl for the chart tests and the e2e suite, cached outside the repository.
.PHONY: k8s-tools
k8s-tools:
	bash scripts/k8s-tools.sh >/dev/null

# NVIDIA Dynamo (ai-dynamo) in a venv of its own for the live benchmark and its tests, cached outside the repository.
.PHONY: dynamo
dynamo:
	bash scripts/dynamo-venv.sh >/dev/null

# The operator scenario on a kind cluster built from local parts (Docker; no registry needed). Not part of `test`:
# the first run builds Kubernetes and a kind node image (cached under ~/.cache/kvroute/kind; see e2e/kind/README.md).
.PHONY: e2e-kind
e2e-kind: $(STAMP) k8s-tools
	bash e2e/kind/run.sh

# The router, operator and simulator images on the private Docker engine of scripts/docker/ (started if it is not
# running; state under ~/.cache/kvroute/docker), tagged kvroute/<name>:dev; `make test` builds them itself.
# DOCKER_HOST=unix://$$HOME/.cache/kvroute/docker/run/docker.sock reaches that engine; `make docker-stop` stops it.
.PHONY: images docker-stop
images:
	bash scripts/docker/dockerd-start.sh >/dev/null
	for image in router operator simulator; do bash scripts/docker/build-image.sh $$image dev; done

docker-stop:
	bash scripts/docker/dockerd-stop.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
