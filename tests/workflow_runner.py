"""Snakemake's CLI in a subprocess, the way users run the workflow (specs/snakemake.md §7.3).

Shared by every test that plans or runs the workflow: import as
``from workflow_runner import snakemake, ROOT, BASE, MICRO``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "config" / "config.yaml"
MICRO = ROOT / "tests" / "config" / "micro.yaml"
# Every rule of the workflow: the micro run executes them all.
RULES = [
    "demo_world",
    "dataset_manifest",
    "pack_tfrecords",
    "train_recognition",
    "evaluate",
    "results_table",
    "export_embedding_model",
    "extract_embeddings",
    "train_autoencoder",
    "encode_latents",
    "train_ldm",
    "identity_check",
    "make_context_candidates",
    "context_candidates",
    "uniform_contexts",
    "probe_contexts",
    "select_contexts",
    "synthesize",
    "synthetic_set_manifest",
    "context_faces_manifest",
    "identity_consistency",
    "pack_demo_weights",
    "plot_recognition_training",
    "plot_ldm_training",
    "plot_roc",
    "plot_samples",
    "plot_contexts",
]
# The rules only the ablation config runs (config/ablation.yaml; tests/test_ablation.py).
ABLATION = ROOT / "config" / "ablation.yaml"
ABLATION_MICRO = ROOT / "tests" / "config" / "ablation_micro.yaml"
ABLATION_RULES = ["spread_contexts", "mixed_manifest", "train_recognition_seed", "evaluate_seed"]


def snakemake(
    workdir: Path, *args: str, configfiles: tuple[Path, ...] = (BASE, MICRO), timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run the workflow from ``workdir`` like a user would, bounded in time."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    command = [
        "timeout", "-k", "10", str(timeout),
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--workflow-profile", "none",
        "--cores", "2",
        *args,
        "--configfile", *map(str, configfiles),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
