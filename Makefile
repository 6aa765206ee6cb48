# make demo: set up .venv and run the whole pipeline on the demo world.
# make ablation: the demo plus one row per beyond-ADMIS switch, three seeds each (config/ablation.yaml).
# make test: set up .venv and run the test suite (what CI runs).
# make report: run the pipeline (if not done), then write its report: results/report.html, .zip.
# make test-slow: only the end-to-end tests marked slow (the full demo and the paper path; about
# 30 minutes on 2 cores).
# make test-slurm: only the SLURM profile test, against a local cluster (root, Debian).
# make constraints: rewrite constraints.txt from .venv (after a passing make test).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# Rules call the `synface` command: the workflow runs with the environment's bin on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
SNAKEMAKE := snakemake --cores $(CORES) --workflow-profile none

.PHONY: setup demo ablation demo-weights report test test-slow test-slurm lint format clean-results constraints

setup: $(STAMP)

# Re-install only when the package metadata or the constraints change; torch comes from the
# local wheel cache. constraints.txt holds the exact versions the test suite passed with.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# After a dependency change and a passing `make test`: record the versions it passed with.
constraints: $(STAMP)
	{ echo "# The exact versions synface's test suite passed with (Python 3.11, Linux x86-64)."; \
	  echo "# make setup installs with them: pip install -c constraints.txt -e '.[dev]'."; \
	  echo "# Refresh after a dependency change and a passing make test: make constraints"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^synface'; } > constraints.txt

demo: $(STAMP)
	$(SNAKEMAKE)
	@cat results/tables/results.md

# The self-contained page (results/report.html) and the same as a folder of files
# (results/report.zip, for runs whose figures make the page too large for a browser).
report: $(STAMP)
	$(SNAKEMAKE)
	$(SNAKEMAKE) --report results/report.html
	$(SNAKEMAKE) --report results/report.zip

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
