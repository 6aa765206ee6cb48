"""The workflow as users run it: Snakemake's CLI in a subprocess (specs/snakemake.md §7.3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "config" / "config.yaml"
MICRO = ROOT / "tests" / "config" / "micro.yaml"
RULES = [
    "demo_world",
    "dataset_manifest",
    "pack_tfrecords",
    "train_recognition",
    "evaluate",
    "export_embedding_model",
    "extract_embeddings",
    "train_autoencoder",
    "encode_latents",
    "train_ldm",
    "identity_check",
    "make_context_candidates",
    "uniform_contexts",
    "select_contexts",
    "synthesize",
    "synthetic_set_manifest",
    "context_faces_manifest",
    "identity_consistency",
    "pack_demo_weights",
]


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


def test_dry_run_plans_every_stage(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    for rule in [*RULES[:-1], "results_table"]:
        assert rule in result.stdout


def test_the_micro_workflow_runs_every_rule_and_builds_the_table(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "all", "demo_weights/PROVENANCE.json")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = json.loads((tmp_path / "results/tables/results.json").read_text())
    labels = yaml.safe_load(BASE.read_text())["datasets"]
    assert [row["model"] for row in rows] == [d["label"] for d in labels.values()]
    assert set(rows[0]) == {"model", "LFW", "CFP-FP", "CPLFW", "AGEDB", "CALFW", "Average"}
    for rule in RULES:
        assert list((tmp_path / "logs" / rule).rglob("*.log")), f"{rule} left no log"
        assert list((tmp_path / "logs" / "benchmarks" / rule).rglob("*.tsv"))
    run_dir = tmp_path / "results/runs/recognition/real"
    assert (run_dir / "META_Epoch_2_checkpoint.pth").exists()
    check = json.loads((tmp_path / "results/ldm/identity_check.json").read_text())
    assert check["contexts"] == 4 and check["samples_per_context"] == 2
    provenance = json.loads((tmp_path / "demo_weights/PROVENANCE.json").read_text())
    assert provenance["steps"]["ldm"] == 6
    assert set(provenance["sha256"]) >= {"ldm/ema_averaged_model.ckpt", "embedding/backbone.pth"}
    # Nothing left to do: the outputs are complete and up to date.
    again = snakemake(tmp_path, "-n", "all", "demo_weights/PROVENANCE.json")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_an_unknown_config_key_stops_the_run_naming_key_and_file(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"recognition": {"train": {"epoch": 3}}}))
    result = snakemake(tmp_path, "-n", configfiles=(BASE, typo))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "unknown config key 'recognition.train.epoch'" in output
    assert str(typo) in output


def test_missing_real_inputs_name_the_expected_paths(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "-n", configfiles=(ROOT / "config" / "frcsyn.yaml",))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "resources/casia-webface/images" in output
    assert "resources/benchmarks/lfw.bin" in output


def _paper_inputs(root: Path) -> None:
    """Placeholders where config/frcsyn.yaml expects the user's data and weights."""
    (root / "resources/casia-webface/images/0").mkdir(parents=True)
    (root / "resources/ffhq-ddpm").mkdir(parents=True)
    for path in (
        *(
            f"resources/benchmarks/{name}.bin"
            for name in ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")
        ),
        "resources/elasticface/295672backbone.pth",
        "resources/elasticface/295672backbone.json",
        "resources/vq-f4/first_stage_encoder_state_dict.pt",
        "resources/vq-f4/first_stage_decoder_state_dict.pt",
        "resources/vq-f4/first_stage.json",
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")


def test_the_paper_scale_30k_run_plans_fast_with_few_jobs(tmp_path: Path) -> None:
    _paper_inputs(tmp_path)
    started = time.perf_counter()
    result = snakemake(tmp_path, "-n", "-p", configfiles=(ROOT / "config" / "frcsyn.yaml",))
    planning = time.perf_counter() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "demo_world" not in output
    assert "torchrun --standalone --nproc-per-node 8 --module synface.cli" in output
    jobs = {
        line.split()[0]: int(line.split()[1])
        for line in output.split("Job stats:")[1].split("total")[0].splitlines()[3:]
        if line.strip()
    }
    # Syn_10k is the first 10k identities of Syn_30k's pool: 30k + 10k (uniform) identities in
    # shards of 500 are 80 synthesis jobs, not millions of files.
    assert jobs["synthesize"] == 60 + 20
    assert sum(jobs.values()) < 300, jobs
    assert planning < 20, f"planning took {planning:.1f} s"


def test_lint_and_format_are_clean() -> None:
    snakefmt = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "Snakefile", "rules"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert snakefmt.returncode == 0, snakefmt.stderr
    lint = snakemake(ROOT, "--lint", configfiles=(BASE,))
    output = lint.stdout + lint.stderr
    assert "your workflow is in a good condition" in output, output


@pytest.mark.slow
def test_the_demo_world_baseline_is_above_chance_and_below_perfect(tmp_path: Path) -> None:
    """The full demo config (what `make demo` runs); about 6 minutes on 2 cores."""
    result = snakemake(tmp_path, configfiles=(BASE,), timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "results/tables/results.json").read_text())
    for benchmark in ("LFW", "CFP-FP", "CPLFW", "AGEDB", "CALFW"):
        assert 65.0 < row[benchmark] <= 100.0, row
    assert min(row["CFP-FP"], row["AGEDB"], row["CALFW"]) < 100.0, row
