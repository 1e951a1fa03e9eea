# Two commands do everything on a fresh machine (each creates .venv when missing):
#   make run    meta-train and evaluate on MovieLens-100K, print the cold-start table
#   make test   lint + the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint baselines clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime only (what `make run` needs): the pinned core requirements and the package itself.
$(RUN_STAMP): $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(RUN_STAMP)

# Tests add the tools and the optional TFDS extra (its loader is tested offline with mock data).
$(TEST_STAMP): $(RUN_STAMP) requirements-tfds.txt requirements-text.txt requirements-test.txt
	$(BIN)/pip install -q -r requirements-test.txt
	touch $(TEST_STAMP)

# glibc.malloc.hugetlb=1: XLA's per-step buffers (~200 MB for this config, a fresh mapping each step) fault in as
# transparent huge pages, 2 MB at a time instead of 4 KB (20x fewer page faults; results unchanged). README, issue 13.
# mmap_max=0, trim_threshold=4G, arena_max=1: those buffers come from one heap that glibc keeps between steps, so
# the kernel stops mapping and zeroing ~200 MB a step (system time about halved; results.json identical).
# Only here: the throughput benchmark's un-synced steps run 14-34% slower with arena_max=1, and this job 40% cheaper
# with the set (85.8-95.9 vs 147.8-149.8 CPU-s; experiments/README.md, "The allocator and the second core").
RUN_MALLOC := glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:glibc.malloc.arena_max=1
# --xla_cpu_multi_thread_eigen=false: the job's matmuls are small (supports of <= 100 rows against 96-64-64 layers),
# so splitting each over Eigen's thread pool only adds spin-waiting on an idle core: idle 2-core box 178.1 -> 156.8
# CPU-s and 2:16 -> 1:55 wall, the printed table byte-identical (README, "`make run`'s CPU, profiled").
RUN_XLA := --xla_cpu_multi_thread_eigen=false
# PJRT_NPROC=1 (unless the caller sets it; XLA reads PJRT_NPROC, then NPROC): XLA's CPU client sizes its intra-op
# pool from it (default: the cores), so each program runs on one pool thread instead of hopping over two, and the
# Python thread keeps the other core for building the next batch: melu 196-201 vs 231-297 CPU-ms a meta-step, fomaml
# 65-73 vs 74-81, states bit-identical (`PJRT_NPROC=1 python -m experiments.job_cost steps --groups=0:16` against
# unset, load ~20); the whole job 163.7 -> 135.8 CPU-s (with the rare programs' level 1), table byte-identical
# (README, "`make run`'s CPU, profiled"). A mesh of D CPU devices still gets max(PJRT_NPROC, D) threads.
run: $(RUN_STAMP)
	PJRT_NPROC=$${PJRT_NPROC:-1} GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}$(RUN_MALLOC) XLA_FLAGS="$(RUN_XLA) $${XLA_FLAGS:-}" $(BIN)/python -m transfer_meta.main --config=configs/melu_ml100k.py --workdir=runs/melu_ml100k

baselines: $(RUN_STAMP)
	$(BIN)/python -m experiments.baselines --seeds=5

lint: $(TEST_STAMP)
	$(BIN)/ruff check transfer_meta tests experiments configs
	$(BIN)/ruff format --check transfer_meta tests experiments configs

test: $(TEST_STAMP) lint
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs
