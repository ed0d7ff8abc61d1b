# Two commands for a newcomer: `make run` and `make test` (README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PROFILE ?= profiles/local
SNAKEMAKE_ARGS ?=
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-slurm dry-run report benchmark clean help

help:
	@echo "make run        venv + install + run the pipeline on the default (mock) config"
	@echo "make test       venv + install with test extras + run the whole test suite"
	@echo "make test-slurm local single-node SLURM (root): the pipeline via profiles/slurm, preemption, time limit (~7 min)"
	@echo "make dry-run    show the jobs the pipeline would run"
	@echo "make report     the Snakemake HTML report (figures and tables with captions)"
	@echo "make benchmark  run the ratio benchmarks in benchmarks/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip

# Reinstall when the dependency list changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/snakemake --profile $(PROFILE) $(SNAKEMAKE_ARGS)
	@echo
	@echo "Results are in $(CURDIR)/results/:"
	@echo "  catalogue shards     results/catalog/*.parquet (mock truth: results/truth/)"
	@echo "  candidates           results/candidates/*.parquet"
	@echo "  selection report     results/candidates/selection_report.md (+ .csv, colour_colour.png)"
	@test ! -f results/evaluation/selection_truth.md || echo "  selection vs truth   results/evaluation/selection_truth.md"
	@echo "  cutouts              results/cutouts/summary.md (manifests per shard; cache in cache/)"
	@echo "  tensors              results/tensors/<scale>/ (images/mask .npy memmaps, index, meta.json)"
	@echo "  runs                 results/runs/<run>/ (model.pt, history.csv, embeddings.parquet)"

report: $(VENV)/.installed-run
	$(BIN)/snakemake --profile $(PROFILE) --report results/report.html $(SNAKEMAKE_ARGS)
	@echo "Report: $(CURDIR)/results/report.html"

dry-run: $(VENV)/.installed-run
	$(BIN)/snakemake --profile $(PROFILE) --dry-run $(SNAKEMAKE_ARGS)

test: $(VENV)/.installed-test
	@bash tests/browser/install_chromium.sh   # Debian chromium for the explorer's browser test (root only)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Starts slurmctld/slurmd/munge from the OS packages (installs them; root), runs the slurm-marked
# tests, stops the daemons again (also on failure). Not part of `make test` (see tests/test_slurm.py).
test-slurm: $(VENV)/.installed-test
	bash tests/slurm/start_cluster.sh
	RUN_SLURM_TESTS=1 $(BIN)/python -m pytest -m slurm -rA tests/test_slurm.py $(PYTEST_ARGS); \
	  rc=$$?; bash tests/slurm/stop_cluster.sh; exit $$rc

benchmark: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.select_streaming
	$(BIN)/python -m benchmarks.stack
	$(BIN)/python -m benchmarks.train_throughput

clean:
	rm -rf results .snakemake
