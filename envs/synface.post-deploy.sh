#!/usr/bin/env bash
# Snakemake runs this inside the new environment, from the workflow's working directory (the
# repository root): install the synface package of this checkout, whose CLI every rule calls.
set -euo pipefail
python -m pip install --no-deps --editable .
