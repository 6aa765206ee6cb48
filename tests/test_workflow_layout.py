"""The workflow's shape: where it runs from, what it checks at start-up, the targets it names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_runner import BASE, MICRO, ROOT, snakemake

FRCSYN = ROOT / "config" / "frcsyn.yaml"


def _diff(tmp_path: Path, name: str, values: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def _shell_commands() -> dict[str, str]:
    """Each rule's shell command as written in rules/*.smk (its string literals joined)."""
    commands = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        text = path.read_text()
        for rule, body in re.findall(r"rule (\w+):(.*?)(?=\n\s*rule \w+:|\Z)", text, re.S):
            shell = re.search(r"shell:\n((?:\s+\"[^\n]*\"\n)+)", body)
            if shell:
                commands[rule] = "".join(re.findall(r'"([^\n]*)"', shell.group(1)))
    return commands


def test_every_value_in_a_shell_command_is_quoted_by_snakemake() -> None:
    """Paths, labels and the --settings JSON go through {x:q} (shlex quoting), never through
    hand-written quotes, so spaces, apostrophes and unicode reach the command intact."""
    commands = _shell_commands()
    assert len(commands) >= 18, sorted(commands)
    for rule, command in commands.items():
        fields = re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", command)
        assert fields, rule
        unquoted = [field for field in fields if not field.endswith(":q")]
        assert not unquoted, f"rule {rule}: {unquoted} not quoted with :q"
        assert "'" not in command, f"rule {rule} quotes by hand: {command}"


def test_the_slurm_profile_leaves_the_status_command_to_the_plugin() -> None:
    """sacct, the plugin's default, is right for a cluster with accounting; squeue is only for
    one without (the test cluster passes it on the command line)."""
    profile = (ROOT / "workflow/profiles/slurm/config.yaml").read_text()
    settings = yaml.safe_load(profile)
    assert "slurm-status-command" not in settings
    assert "slurm-init-seconds-before-status-checks" not in settings
    assert "--slurm-status-command squeue" in profile  # the comment says when to override


def test_the_default_config_plans_from_another_directory(tmp_path: Path) -> None:
    """No --configfile and an unrelated working directory: the config, the schema and the demo
    weights are found in the checkout, not in the working directory."""
    work = tmp_path / "work"
    work.mkdir()
    command = [
        sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
        "--directory", str(work), "--workflow-profile", "none", "--cores", "1", "-n", "-p",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"--ldm {ROOT}/demo_weights/ldm/ema_averaged_model.ckpt" in output
    assert f"--first-stage {ROOT}/demo_weights/first_stage " in output
    assert "--first-stage-spec" not in output


def test_a_rule_runs_from_another_directory_on_the_demo_weights(tmp_path: Path) -> None:
    """Execution, not only planning: the embedding model is exported from the shipped weights
    of the checkout into the working directory."""
    result = snakemake(tmp_path, "results/embedding/model.onnx", configfiles=(BASE,))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (tmp_path / "results/embedding/model.onnx").stat().st_size > 0
    assert not (tmp_path / "demo_weights").exists()


def _missing_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "missing real inputs" in output, output[-3000:]
    return output.split("missing real inputs")[1].splitlines()


def test_the_preflight_lists_every_missing_real_input_at_once(tmp_path: Path) -> None:
    lines = _missing_lines(snakemake(tmp_path, "-n", configfiles=(FRCSYN,)))
    for expected in (
        "datasets.real.path: image folder 'resources/casia-webface/images'",
        "resources/benchmarks/lfw.bin",
        "embedding.weights: 'resources/elasticface/295672backbone.pth'",
        "embedding.weights: 'resources/elasticface/295672backbone.json'",
        "first_stage.path: 'resources/vq-f4/first_stage_encoder_state_dict.pt'",
        "first_stage.path: 'resources/vq-f4/first_stage_decoder_state_dict.pt'",
        "first_stage.path: 'resources/vq-f4/first_stage.json'",
        "contexts.model_dir: 'resources/ffhq-ddpm'",
    ):
        assert any(expected in line for line in lines), expected
    (spec_line,) = [line for line in lines if "first_stage.json' not found" in line]
    spec = json.loads(spec_line.split("there: ", 1)[1])
    assert spec["n_embed"] == 8192 and spec["ddconfig"]["ch"] == 128


def test_the_preflight_checks_a_supplied_ldm_and_context_database(tmp_path: Path) -> None:
    diff = _diff(
        tmp_path,
        "database.yaml",
        {
            "ldm": {"source": "file"},
            "contexts": {
                "source": "database",
                "images": "resources/admis/context_database/images",
                "embed_npy": "resources/admis/elastic_embed.npy",
                "names_pkl": "resources/admis/image_names.pkl",
            },
        },
    )
    lines = _missing_lines(snakemake(tmp_path, "-n", configfiles=(FRCSYN, diff)))
    for expected in (
        "ldm.checkpoint: 'resources/admis/ema_averaged_model_200000.ckpt'",
        "contexts.images: 'resources/admis/context_database/images'",
        "contexts.embed_npy: 'resources/admis/elastic_embed.npy'",
        "contexts.names_pkl: 'resources/admis/image_names.pkl'",
    ):
        assert any(expected in line for line in lines), expected
    assert not any("contexts.model_dir" in line for line in lines)
    # The released checkpoint's UNet ships with synface: no hand-written .json is asked for.
    assert not any("ema_averaged_model_200000.json" in line for line in lines)


def test_the_preflight_reads_the_description_beside_a_supplied_ldm(tmp_path: Path) -> None:
    """A model yaml beside the checkpoint that describes another model is named at start-up,
    not at the first sampling job."""
    admis = tmp_path / "resources/admis"
    admis.mkdir(parents=True)
    (admis / "ema_averaged_model_200000.ckpt").touch()
    (admis / "ema_averaged_model_200000.yaml").write_text("_target_: models.ControlNet\n")
    diff = _diff(tmp_path, "ldm.yaml", {"ldm": {"source": "file"}})
    lines = _missing_lines(snakemake(tmp_path, "-n", configfiles=(FRCSYN, diff)))
    assert any(
        "ldm.checkpoint: resources/admis/ema_averaged_model_200000.yaml: _target_ is "
        "models.ControlNet" in line
        for line in lines
    ), lines


@pytest.mark.parametrize(
    ("target", "runs", "skips"),
    [
        ("recognition_real", {"train_recognition", "evaluate"}, {"train_ldm", "synthesize"}),
        ("ldm", {"train_ldm", "identity_check"}, {"synthesize", "evaluate"}),
        ("evaluations", {"synthesize", "evaluate", "results_table"}, {"identity_consistency"}),
    ],
)
def test_named_partial_targets_plan_their_part(
    tmp_path: Path, target: str, runs: set[str], skips: set[str]
) -> None:
    result = snakemake(tmp_path, target, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr[-3000:]
    planned = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert runs <= planned, planned
    assert not skips & planned, planned


def test_synthetic_sets_plan_pools_with_their_images_per_identity(tmp_path: Path) -> None:
    """The `synthetic_sets` target; two sets share a pool only when contexts and images per
    identity agree, and each pool's shards generate the count the config gives."""
    result = snakemake(tmp_path, "synthetic_sets", "-n", "-p", configfiles=(BASE, MICRO))
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout
    assert "rule identity_consistency:" in output and "rule evaluate:" not in output
    assert "--images-per-identity 2 --out-dir results/synthetic/pools/selected-2/images" in output
    assert "--images-per-identity 6 --out-dir results/synthetic/pools/uniform-6/images" in output


def test_a_uniform_set_with_oversampling_is_refused(tmp_path: Path) -> None:
    diff = _diff(tmp_path, "uniform.yaml", {"datasets": {"uniform_100": {"oversample": 5}}})
    result = snakemake(tmp_path, "-n", configfiles=(BASE, MICRO, diff))
    assert result.returncode != 0
    assert "datasets.uniform_100.oversample is 5" in result.stdout + result.stderr


def test_the_readme_recipe_for_one_job_again_reruns_that_job_only(
    micro_run: Path, tmp_path: Path
) -> None:
    """The README's "one job again" line, run as written on a finished micro run (it replaced
    `-R train_recognition --until train_recognition`, which ended in "Out of jobs ready to be
    started")."""
    readme = (ROOT / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.endswith("# one job again")]
    args = line.split("#")[0].split()
    assert args[:3] == ["snakemake", "--cores", "all"], line
    workdir = tmp_path / "w"
    shutil.copytree(micro_run, workdir, symlinks=True)
    again = snakemake(workdir, *args[3:])
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "rule train_recognition:" in output
    assert "1 of 1 steps (100%) done" in output
