"""The beyond-ADMIS ablation: spread contexts, mixed datasets, the table's repeated runs, and
the plan (and, marked slow, a micro run) of config/ablation.yaml."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from workflow_runner import ABLATION, ABLATION_MICRO, ABLATION_RULES, BASE, MICRO, snakemake

from synface.cli import build_parser
from synface.contexts import SpreadConfig, pairwise_cosines, spread_contexts, write_spread_contexts
from synface.evaluation.table import write_results_table
from synface.io.manifest import ManifestEntry, mix_manifests, read_manifest, write_manifest

ABLATION_CONFIGS = (BASE, MICRO, ABLATION, ABLATION_MICRO)


def _crowded(n: int = 40) -> torch.Tensor:
    """Unit rows around a common direction, with one near-duplicate pair."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(n, 64, generator=g, dtype=torch.float64)
    rows = torch.nn.functional.normalize(rows, dim=1) + 0.8 * torch.ones(64) / 8
    rows[1] = rows[0] + 0.3 * rows[1]
    return torch.nn.functional.normalize(rows, dim=1).float()


def test_spread_contexts_widen_the_smallest_angle_and_stay_near(tmp_path: Path) -> None:
    contexts = _crowded()
    cfg = SpreadConfig.from_settings({})
    spread = spread_contexts(contexts, cfg)
    before, after = pairwise_cosines(contexts), pairwise_cosines(spread)
    assert after["max_cosine"] < before["max_cosine"] - 0.1  # a larger minimum angle
    assert after["mean_cosine"] < before["mean_cosine"]
    assert torch.allclose(spread.norm(dim=1), torch.ones(len(spread)), atol=1e-5)
    assert float((spread * contexts).sum(dim=1).min()) > 0.8  # near their originals
    # Chunked rows give the same result as one block.
    assert torch.allclose(spread_contexts(contexts, cfg, chunk=7), spread, atol=1e-6)
    np.save(tmp_path / "selected.npy", contexts.numpy())
    summary = write_spread_contexts(tmp_path / "selected.npy", tmp_path / "spread", cfg)
    assert summary["before"] == before and summary["after"] == after
    written = json.loads((tmp_path / "spread" / "spread.json").read_text())
    assert written["after"]["max_cosine"] < written["before"]["max_cosine"]
    assert np.array_equal(np.load(tmp_path / "spread" / "contexts.npy"), spread.numpy())


def test_a_mixed_dataset_keeps_the_labels_of_its_parts_apart(tmp_path: Path) -> None:
    real = [ManifestEntry(tmp_path / f"r{i}.jpg", label) for i, label in enumerate([0, 0, 2])]
    synthetic = [ManifestEntry(tmp_path / f"s{i}.png", label) for i, label in enumerate([0, 1])]
    write_manifest(tmp_path / "real.tsv", real)
    write_manifest(tmp_path / "syn.tsv", synthetic)
    assert mix_manifests([tmp_path / "real.tsv", tmp_path / "syn.tsv"], tmp_path / "mix.tsv") == 5
    mixed = read_manifest(tmp_path / "mix.tsv")
    assert [e.path.name for e in mixed] == ["r0.jpg", "r1.jpg", "r2.jpg", "s0.png", "s1.png"]
    assert [e.label for e in mixed] == [0, 0, 2, 3, 4]
    with pytest.raises(ValueError, match="two or more parts"):
        mix_manifests([tmp_path / "real.tsv"], tmp_path / "one.tsv")


def _evaluation(path: Path, accuracy: float) -> Path:
    names = ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")
    path.write_text(json.dumps({"benchmarks": {n: {"accuracy": accuracy} for n in names}}))
    return path


def test_the_table_reports_mean_and_std_over_seeds_and_consistency(tmp_path: Path) -> None:
    runs = [_evaluation(tmp_path / f"s{i}.json", a) for i, a in enumerate([0.8, 0.9, 0.85])]
    single = _evaluation(tmp_path / "one.json", 0.7)
    report = tmp_path / "consistency.json"
    report.write_text(json.dumps({"eer": 0.015, "fdr": 12.5, "genuine_mean": 0.9,
                                  "genuine_std": 0.05}))  # fmt: skip
    out = tmp_path / "t"
    rows = write_results_table({"syn": runs, "real": single}, out / "t.md", out / "t.csv",
                               out / "t.json", consistency={"syn": report})  # fmt: skip
    syn, real = rows
    assert syn["LFW"] == 85.0 and syn["LFW std"] == 5.0  # sample std (n - 1)
    assert syn["Average"] == 85.0 and syn["runs"] == 3
    assert syn["EER %"] == 1.5 and syn["FDR"] == 12.5 and syn["genuine spread"] == 0.05
    assert real["LFW"] == 70.0 and "LFW std" not in real and real["EER %"] is None
    lines = (out / "t.md").read_text().splitlines()
    assert lines[0].endswith("| Average | EER % | FDR | genuine mean | genuine spread |")
    assert "| syn | 85.00 ± 5.00 |" in lines[2] and lines[3].endswith("| – | – | – | – |")
    assert lines[2].endswith("| 1.50 | 12.500 | 0.900 | 0.050 |")  # run-independent figures


def _job_counts(output: str) -> dict[str, int]:
    stats = output[output.index("Job stats:") :]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)}


def test_the_ablation_plans_one_training_per_row_and_seed(tmp_path: Path) -> None:
    """A dry run of the micro ablation: every row trained and evaluated once per seed, one
    pool per switch, the spread contexts made once, each mixed set once."""
    plan = snakemake(tmp_path, "-n", "-p", configfiles=ABLATION_CONFIGS, timeout=300)
    assert plan.returncode == 0, (plan.stdout + plan.stderr)[-3000:]
    counts = _job_counts(plan.stdout)
    config = yaml.safe_load(ABLATION.read_text())
    rows = len(yaml.safe_load(BASE.read_text())["datasets"]) + len(config["datasets"])
    seeds = yaml.safe_load(ABLATION_MICRO.read_text())["recognition"]["seeds"]
    assert counts["train_recognition_seed"] == counts["evaluate_seed"] == rows * len(seeds)
    assert counts["spread_contexts"] == 1
    assert counts["mixed_manifest"] == 2  # real + syn_300, real + syn_100
    assert "evaluate" not in counts  # with seeds, only the repeats make table rows
    pools = set(re.findall(r"results/synthetic/pools/([\w-]+)/shards", plan.stdout))
    assert len(pools) == 2 + 12  # the demo's two, one per switch row and the combinations
    # Every planned command parses under the CLI (the switches' options included).
    commands = re.findall(r"^Shell command: synface (.*)$", plan.stdout, re.MULTILINE)
    assert len(commands) == counts["total"] - counts["all"]
    for command in commands:
        words = shlex.split(command)
        build_parser().parse_args(words[: words.index(">")])


@pytest.mark.slow
def test_the_micro_ablation_runs_and_tabulates_mean_and_std(
    micro_run: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "w"
    shutil.copytree(micro_run, workdir, symlinks=True)
    result = snakemake(workdir, configfiles=ABLATION_CONFIGS, timeout=2400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for rule in ABLATION_RULES:
        assert list((workdir / "logs" / rule).rglob("*.log")), f"{rule} left no log"
    rows = json.loads((workdir / "results/tables/results.json").read_text())
    assert all(row["runs"] == 2 and "Average std" in row for row in rows)
    synthetic = [row for row in rows if row["EER %"] is not None]
    assert len(synthetic) == 17
    spread = json.loads((workdir / "results/contexts/spread/spread.json").read_text())
    assert spread["after"]["max_cosine"] <= spread["before"]["max_cosine"]
