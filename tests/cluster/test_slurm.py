"""The SLURM profile against a real single-node cluster with fake GPUs (tests/cluster/start.sh).

The micro workflow runs the way a user runs it on a cluster, `snakemake --profile
workflow/profiles/slurm`, so what is proven is the committed profile and the executor plugin
against slurmctld, not a mock (shared/specs/local-slurm.md). The cluster starts once for the
module, and the module is skipped, with the reason, where this machine cannot host one (not
root, not Debian, slurm-wlm not installable).

Every SLURM job costs 20 to 45 s here (the jobstep's two Snakemake start-ups, then the plugin's
status checks 5, 20 and 45 s after submission), so only the jobs whose submission is under test
go through SLURM: the micro workflow's demo world, manifest and packing for the real faces are
built plainly first, then two runs share that working directory: the first trains on one GPU
and has its training job cancelled; the second resumes it, finishes and evaluates, while a
manifest job added to it fails at run time. The tests below read what those runs left.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from workflow_runner import BASE, MICRO, ROOT, snakemake

HERE = Path(__file__).resolve().parent
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
CONFIGFILES = (BASE, MICRO)
PARTITION = "synface"
# "Job 3 has been submitted with SLURM jobid 5 (log: .../logs/slurm/rule_<rule>/<wildcards>/5.log)"
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_([\w/]+?)/\d+\.log\)")
STARTED = re.compile(r"^rule (\w+):$", re.MULTILINE)
TARGET = "results/evaluation/real.json"


@dataclass(frozen=True)
class FirstRun:
    """The interrupted run: its output, and the training job as seen while it ran."""

    returncode: int
    output: str
    training_environ: dict[str, str]
    training_job: str


def scontrol_job(job_id: str, env: dict[str, str]) -> str:
    """slurmctld's record of a job; finished jobs stay listed for MinJobAge (300 s)."""
    command = ["scontrol", "show", "job", "--details", job_id]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout


def snakemake_command(
    workdir: Path, configfiles: tuple[Path, ...], *args: str, timeout: int = 300
) -> list[str]:
    """The user's cluster command line, bounded: a status hang would otherwise block CI."""
    return [
        "timeout", "-k", "10", str(timeout),
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--profile", str(PROFILE),
        "--workflow-profile", "none",
        # This cluster has no accounting, so no sacct: squeue, as the profile's comment says
        # for such a site, polled from 5 s on (MinJobAge is 300 s here) to keep jobs short.
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "5",
        *args,
        "--configfile", *map(str, configfiles),
    ]  # fmt: skip


def find_training_process() -> dict[str, str] | None:
    """The environment of a `synface train-recognition` process running inside a SLURM job."""
    for proc in Path("/proc").iterdir():
        try:
            if b"train-recognition" not in (proc / "cmdline").read_bytes().split(b"\0"):
                continue
            pairs = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # not a process, or it has just ended
            continue
        environ = dict(p.decode().partition("=")[::2] for p in pairs if b"=" in p)
        if "SLURM_JOB_ID" in environ:
            return environ
    return None


def stop(run: subprocess.Popen[str]) -> None:
    """End a background Snakemake: `timeout` passes SIGTERM on, and Snakemake cancels its
    SLURM jobs on the way out."""
    if run.poll() is None:
        run.terminate()
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start the cluster once; yield the environment that reaches it; stop what was started."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (it installs slurm-wlm and runs slurmd)")
    if not Path("/etc/debian_version").exists():
        pytest.skip("the SLURM test cluster needs Debian's slurm-wlm and munge packages")
    state = tmp_path_factory.mktemp("slurm")
    start = ["timeout", "-k", "10", "300", str(HERE / "start.sh"), str(state)]
    env = {**os.environ, "SYNFACE_TEST_PARTITION": PARTITION}
    started = subprocess.run(start, capture_output=True, text=True, env=env)
    try:
        if started.returncode == 3:
            pytest.skip(started.stderr.strip().splitlines()[-1])
        assert started.returncode == 0, f"start.sh failed:\n{started.stderr[-3000:]}"
        env = {
            **os.environ,
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
            "SLURM_CONF": str(state / "etc" / "slurm.conf"),
            "SYNFACE_SLURM_PARTITION": PARTITION,
        }
        env.pop("SYNFACE_SLURM_ACCOUNT", None)
        yield env
    finally:
        subprocess.run(["timeout", "-k", "5", "60", str(HERE / "stop.sh"), str(state)])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training set packed without SLURM: what precedes training is not under test here,
    and three more SLURM jobs would cost a minute or two."""
    folder = tmp_path_factory.mktemp("workflow")
    packed = snakemake(folder, "results/tfrecords/real/pack.json", configfiles=CONFIGFILES)
    assert packed.returncode == 0, (packed.stdout + packed.stderr)[-3000:]
    return folder


@pytest.fixture(scope="module")
def first_run(cluster: dict[str, str], workdir: Path) -> FirstRun:
    """The recognition branch with training on one GPU; the training job is cancelled once
    its first epoch's checkpoint is written."""
    gpu = workdir / "gpu.yaml"
    # Four epochs leave seconds between the first checkpoint and the end of training.
    gpu.write_text(yaml.safe_dump({"recognition": {"gpus": 1, "train": {"epochs": 4}}}))
    checkpoint = workdir / "results/runs/recognition/real/META_Epoch_1_checkpoint.pth"
    # --retries 0 (here and in the rerun): a failed job ends the run instead of being
    # resubmitted, which the profile does once.
    command = snakemake_command(workdir, (*CONFIGFILES, gpu), "--retries", "0", TARGET)
    run = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cluster,
        cwd=workdir,
    )
    training: dict[str, str] | None = None
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
            training = training or find_training_process()
            time.sleep(0.2)
        if training is None or not checkpoint.exists():
            stop(run)
            pytest.fail(f"training never reached its first checkpoint:\n{run.communicate()[0]}")
        job = scontrol_job(training["SLURM_JOB_ID"], cluster)
        subprocess.run(["scancel", training["SLURM_JOB_ID"]], env=cluster, check=True)
        output, _ = run.communicate(timeout=120)
    finally:
        stop(run)
    return FirstRun(run.returncode, output, training, job)


@pytest.fixture(scope="module")
def rerun(
    cluster: dict[str, str], workdir: Path, first_run: FirstRun
) -> subprocess.CompletedProcess[str]:
    """The same command again, now also asking for the manifest of a second dataset whose
    folder holds no faces: a config mistake that only shows when its job runs."""
    (workdir / "empty").mkdir()
    broken = {"datasets": {"broken": {"source": "folder", "path": "empty", "label": "Broken"}}}
    (workdir / "broken.yaml").write_text(yaml.safe_dump(broken))
    configfiles = (*CONFIGFILES, workdir / "gpu.yaml", workdir / "broken.yaml")
    targets = (TARGET, "results/datasets/broken/manifest.tsv")
    command = snakemake_command(workdir, configfiles, "--retries", "0", *targets)
    return subprocess.run(command, capture_output=True, text=True, env=cluster, cwd=workdir)


def test_the_profile_takes_partition_and_account_from_the_environment(tmp_path: Path) -> None:
    """Without a cluster: a dry run shows the resources each job would be submitted with."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    env.pop("SYNFACE_SLURM_ACCOUNT", None)
    # A partition named like a Python value stays a string (resource values are expressions).
    env["SYNFACE_SLURM_PARTITION"] = "all"
    command = snakemake_command(tmp_path, CONFIGFILES, "-n", TARGET, timeout=120)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    resources = re.findall(r"^    resources: (.*)$", output, re.MULTILINE)
    assert resources and all("slurm_partition=all" in r for r in resources), output
    assert "slurm_account" not in output  # unset: no -A
    training = re.search(r"^rule train_recognition:\n(?:    .*\n)*?    resources: (.*)$",
                         output, re.MULTILINE)  # fmt: skip
    assert training, output
    for setting in ("mem_mb=64000", "runtime=2880", "cpus_per_gpu=8"):
        assert setting in training.group(1)


def test_every_job_goes_through_sbatch(
    cluster: dict[str, str], first_run: FirstRun, rerun: subprocess.CompletedProcess[str]
) -> None:
    for output in (first_run.output, rerun.stdout + rerun.stderr):
        submissions = SUBMITTED.findall(output)
        # Rules marked localrule (printed as "localrule x:") would run on the submit host.
        submitted_rules = Counter(job.split("/")[0] for _, job in submissions)
        assert submitted_rules == Counter(STARTED.findall(output))
        for job_id, _ in submissions:
            assert f"JobId={job_id} " in scontrol_job(job_id, cluster)
        # The partition comes from SYNFACE_SLURM_PARTITION through the profile.
        assert f"slurm_partition={PARTITION}" in output


def test_a_gpu_job_gets_its_gpu_and_the_profiles_cpus_per_gpu(first_run: FirstRun) -> None:
    """rule gpu=1 becomes --gpus=1; SLURM hands the job one (fake) GPU, and the training
    process sees exactly that device in CUDA_VISIBLE_DEVICES."""
    assert "TresPerJob=gres:gpu:1" in first_run.training_job
    assert "CpusPerTres=gres:gpu:8" in first_run.training_job  # set-resources in the profile
    allocated = re.search(r"GRES=gpu:1\(IDX:(\d+)\)", first_run.training_job)
    assert allocated, first_run.training_job
    assert first_run.training_environ.get("CUDA_VISIBLE_DEVICES") == allocated.group(1)


def test_a_job_failing_at_run_time_is_reported_as_failed(
    cluster: dict[str, str], workdir: Path, rerun: subprocess.CompletedProcess[str]
) -> None:
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 1, output[-3000:]
    assert re.findall(r"^Error in rule (\w+):", output, re.MULTILINE) == ["dataset_manifest"]
    assert "SLURM status is: 'FAILED'" in output
    (failed,) = [i for i, job in SUBMITTED.findall(output) if job == "dataset_manifest/broken"]
    assert "JobState=FAILED" in scontrol_job(failed, cluster)
    log = (workdir / "logs/dataset_manifest/broken.log").read_text()
    assert "holds no .jpg/.png images" in log


def test_the_rerun_after_scancel_resumes_training_and_finishes(
    cluster: dict[str, str],
    workdir: Path,
    first_run: FirstRun,
    rerun: subprocess.CompletedProcess[str],
) -> None:
    assert first_run.returncode == 1, first_run.output[-3000:]
    assert "Error in rule train_recognition" in first_run.output
    assert "SLURM status is: 'CANCELLED'" in first_run.output
    # Only what the cancellation left undone runs again (keep-going in the profile carries
    # it past the broken dataset), and training continues its run.
    jobs = {job: i for i, job in SUBMITTED.findall(rerun.stdout + rerun.stderr)}
    assert jobs.keys() == {"train_recognition/real", "evaluate/real", "dataset_manifest/broken"}
    for job in ("train_recognition/real", "evaluate/real"):
        assert "JobState=COMPLETED" in scontrol_job(jobs[job], cluster)
    log = (workdir / "logs/train_recognition/real.log").read_text()
    assert re.search(r"resumed \S+ at epoch [1-3],", log)
    evaluation = json.loads((workdir / TARGET).read_text())
    assert evaluation["weights"] == "results/recognition/real/backbone.pth"
    assert len(evaluation["benchmarks"]) == 5
