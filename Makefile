# kvs2 — the two commands a person needs are `make up` and `make test`.
# Every target prepares what it needs itself (the venv, Kafka's jars, Go-built tools) and caches
# slow downloads and builds under ~/.cache/kvs2/.
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: help venv proto up down test test-unit lint fmt bench bench-snapshot cluster cluster-down clean torture

help:
	@echo "make up          start Kafka (127.0.0.1:19092) and two replicas (127.0.0.1:50051, :50052)"
	@echo "make down        stop what 'make up' started"
	@echo "make test        lint + the whole test suite against real Kafka / Kubernetes binaries"
	@echo "make test-unit   only the unit tests (no external processes)"
	@echo "make lint        ruff + mypy --strict"
	@echo "make bench       benchmarks; results land in bench/RESULTS.md"
	@echo "make bench-snapshot  new replica by peer snapshot vs replay (1M, 10M keys) into bench/RESULTS.md"
	@echo "make cluster     Kafka + a local Kubernetes control plane + process kubelet + operator + demo store"
	@echo "make torture     randomized faults + operations, then every checker's verdict (SEED=1 DURATION=60)"

venv:
	@scripts/venv.sh

proto: venv
	scripts/gen-proto.sh

up: venv
	$(PY) -m tests.harness.devstack up

down: venv
	$(PY) -m tests.harness.devstack down

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

fmt: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# make bench: kvs2 vs etcd, Redis and a bare grpc.aio floor in one run (~10 min on a quiet machine), appended
# to bench/RESULTS.md with a PNG plot beside it. A subset: make bench BENCH_ARGS="--only get,resp --seconds 5".
bench: venv
	$(PY) -m bench.run $(BENCH_ARGS)

# Time to SERVING for a new replica by peer snapshot vs by replay (1 M and 10 M keys; KEYS="--keys N ...").
KEYS ?= --keys 1000000 --keys 10000000
bench-snapshot: venv
	$(PY) -m bench.snapshot $(KEYS)

SEED ?= 1
DURATION ?= 60
torture: venv
	$(PY) -m tests.harness.torture --seed $(SEED) --duration $(DURATION) $(TORTURE_ARGS)

cluster: venv
	$(PY) -m tests.harness.cluster up

cluster-down: venv
	$(PY) -m tests.harness.cluster down

clean: down
	rm -rf .kvs2
