# make demo: set up .venv and run the whole pipeline on the demo world.
# make ablation: the demo plus one row per beyond-ADMIS switch, three seeds each (config/ablation.yaml).
# make test: set up .venv and run the test suite (what CI runs).
# make test-slow: only the end-to-end tests marked slow (the full demo and the paper path; about
# 30 minutes on 2 cores).
# make test-slurm: only the SLURM profile test, against a local cluster (root, Debian).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# Rules call the `synface` command: the workflow runs with the environment's bin on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
SNAKEMAKE := snakemake --cores $(CORES) --workflow-profile none

.PHONY: setup demo ablation demo-weights test test-slow test-slurm lint format clean-results

setup: $(STAMP)

# Re-install only when the package metadata changes; torch comes from the local wheel cache.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(SNAKEMAKE)
	@cat results/tables/results.md

# The beyond-ADMIS ablation (config/ablation.yaml over the demo config): the demo's rows, one row
# per switch, a combination and real + synthetic, each trained with three seeds (mean ± std).
ablation: $(STAMP)
	$(SNAKEMAKE) --configfile config/config.yaml config/ablation.yaml
	@cat results/tables/results.md

# Remake the shipped demo-world weights (embedding model, first stage, LDM) with the workflow's
# own rules and record their provenance in demo_weights/PROVENANCE.json. Hours on 2 CPU cores;
# minutes on one GPU. --force: the shipped PROVENANCE.json exists, so without it nothing runs.
demo-weights: $(STAMP)
	$(SNAKEMAKE) --config use_demo_weights=False --force -- demo_weights/PROVENANCE.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Starts a single-node SLURM cluster with fake GPUs (tests/cluster/start.sh) for about 3 minutes.
test-slurm: $(STAMP)
	$(BIN)/python -m pytest -q tests/cluster

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --workflow-profile none -n

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/snakefmt Snakefile rules

clean-results:
	rm -rf results logs .snakemake
