# Every target sets up what it needs: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The venv's bin first on PATH: tests find the checkers installed there (hadolint, docker-compose).
PYTEST := PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest

.PHONY: install run demo test unit integration chaos bench bench-quick bench-ingest bench-backfill image lint fmt schemas clean lock audit
# Locked resolution for every Python from 3.11 and every platform, each file with its hashes (requirements/).
LOCK := $(VENV)/bin/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet --custom-compile-command "make lock"

install: $(VENV)/.installed

## Exact versions from requirements/dev.txt, each file checked against its hash (--no-deps: nothing unlisted is
## resolved), then the package itself, built with the locked backend (no isolated, unpinned build environment).
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

## The lock files again from pyproject.toml and requirements/build.in (the newest versions the ranges allow).
lock: install
	$(LOCK) pyproject.toml -o requirements/runtime.txt
	$(LOCK) requirements/build.in -o requirements/build.txt
	$(LOCK) pyproject.toml requirements/build.in --extra dev -o requirements/dev.txt

## Known advisories of the versions the image ships, from PyPI's advisory data (.ci/audit.py says how).
audit: install
	$(PY) .ci/audit.py

## The worker on an embedded local stack (Tansu + redis-server) unless WORKER_KAFKA_BOOTSTRAP_SERVERS /
## WORKER_REDIS_URL point at real ones. Ctrl-C stops all of it.
run: install
	$(PY) -m worker run --embedded

## Embedded stack + worker + sample events; prints the records and DLQ entries, then exits.
demo: install
	$(PY) -m worker demo

## Lint, then every test but the long chaos run. pytest's exit 5 (nothing collected) is not a failure.
test: lint
	$(PYTEST) $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

unit: install
	$(PYTEST) tests/unit $(PYTEST_ARGS)

integration: install
	$(PYTEST) tests/integration $(PYTEST_ARGS)

## The full chaos run (200,000 events, kills, a Redis restart, scaling); prints a one-line JSON summary.
chaos: install
	$(PYTEST) tests/chaos -m chaos -s $(PYTEST_ARGS)

## Throughput, latency, memory and Redis round trips of the worker against a bare passthrough, on the
## embedded stack, with a py-spy profile (several minutes); writes bench/RESULTS.md.
bench: install
	$(PY) -m bench.run --profile

## The same, ten times smaller and without profile (about a minute); writes bench/RESULTS-quick.md (git-ignored).
bench-quick: install
	$(PY) -m bench.run --quick

## The container image group-events-worker:<version>: `docker build` where a Docker engine answers, else buildah
## (no engine) on the official base, else on a local Debian base made with debootstrap. Says which and why.
image:
	$(PYTHON) deploy/image/build.py

## The backfill against the local Qlik tenant: events/s and requests per 1,000 events (under a minute);
## writes bench/RESULTS-backfill.md.
bench-backfill: install
	$(PY) -m bench.backfill

## The webhook ingest under load: accepted requests/s of signed 1 KB posts at saturation (wrk) and p99 at
## 2,000 requests/s (hey), on the embedded broker (about a minute); writes bench/RESULTS-ingest.md.
## Needs Debian's wrk and hey (apt-get install wrk hey).
bench-ingest: install
	$(PY) -m bench.ingest

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy --strict worker bench deploy/image/build.py tests/support/kafka_fakes.py

fmt: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## Regenerate worker/processing/schemas/*.json from the record TypedDicts.
schemas: install
	$(PY) -c "from worker.processing.records import write_schemas; write_schemas()"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
