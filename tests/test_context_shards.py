"""The context stage in shards: candidates and probe scores are the same bytes however the work
is split, interrupted shards resume, and a 300k-identity run plans as many small jobs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from test_workflow import _paper_inputs
from workflow_runner import ROOT, snakemake

from synface import probes
from synface.contexts import generate_ldm_faces
from synface.io.embeddings import write_embeddings
from synface.io.manifest import join_manifests, read_manifest
from synface.probes import ProbeSettings, probe_shard, read_scores

WEIGHTS = ROOT / "demo_weights"
LDM, FIRST_STAGE = WEIGHTS / "ldm" / "ema_averaged_model.ckpt", WEIGHTS / "first_stage"
EMBEDDING = WEIGHTS / "embedding" / "backbone.pth"


def _candidates(out: Path, shards: list[range], seed: int = 1) -> Path:
    """Seven candidates from the shipped LDM in ``shards``, batches of 4 (so batches and shards
    cut each other), joined into ``out/manifest.tsv``."""
    for indices in shards:
        generate_ldm_faces(LDM, FIRST_STAGE, indices, out, face_size=32, seed=seed, steps=2,
                           batch_size=4)  # fmt: skip
    markers = [out / "shards" / f"{r.start}-{r.stop}.tsv" for r in shards]
    join_manifests(markers, out / "manifest.tsv")
    return out / "manifest.tsv"


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "shards" not in p.parts
    }


def test_candidates_in_three_shards_are_the_bytes_of_one_job(tmp_path: Path) -> None:
    one = _candidates(tmp_path / "one", [range(7)])
    three = _candidates(tmp_path / "three", [range(0, 3), range(3, 6), range(6, 7)])
    assert [e.label for e in read_manifest(three)] == list(range(7))
    assert _files(one.parent) == _files(three.parent)
    assert len(list(one.parent.glob("images/*/0.png"))) == 7


def test_an_interrupted_candidate_shard_resumes_and_a_rerun_remakes(tmp_path: Path) -> None:
    out = tmp_path / "c"
    _candidates(out, [range(0, 4)])
    face = out / "images" / "00001" / "0.png"
    made = face.read_bytes()
    face.write_bytes(b"kept")
    journal = out / "shards" / ".0-4.running"
    journal.write_text("{}")  # the shard was interrupted: its finished faces are kept
    _candidates(out, [range(0, 4)])
    assert face.read_bytes() == b"kept" and not journal.exists()
    _candidates(out, [range(0, 4)])  # no journal: a fresh run makes every face anew
    assert face.read_bytes() == made
    with pytest.raises(
        ValueError, match=r"4 candidate faces made with other settings \(seed differ"
    ):
        _candidates(out, [range(0, 4)], seed=2)
    assert face.read_bytes() == made


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven unit embeddings standing in for the candidates' (the probes only read them)."""
    import numpy as np

    folder = tmp_path_factory.mktemp("embedded")
    rows = np.random.default_rng(0).normal(size=(7, 512)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    write_embeddings(folder, rows, [f"images/{i:05d}/0.png" for i in range(7)])
    return folder


def _probe(embedded: Path, rows: range, out: Path) -> int:
    settings = ProbeSettings.from_settings({"probe_samples": 2, "steps": 2, "batch_size": 4})
    return probe_shard(embedded, LDM, FIRST_STAGE, EMBEDDING, rows, out, settings)


def test_probe_scores_do_not_depend_on_the_shards(embedded: Path, tmp_path: Path) -> None:
    _probe(embedded, range(0, 7), tmp_path / "0-7.tsv")
    _probe(embedded, range(0, 3), tmp_path / "0-3.tsv")
    _probe(embedded, range(3, 10), tmp_path / "3-10.tsv")  # planned past the table's end
    one = read_scores(tmp_path / "0-7.tsv")
    assert sorted(one) == list(range(7))
    assert one == {**read_scores(tmp_path / "0-3.tsv"), **read_scores(tmp_path / "3-10.tsv")}


def test_an_interrupted_probe_shard_keeps_its_finished_batches(
    embedded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scored: list[list[int]] = []
    real = probes.Prober.scores

    def failing_after_one_batch(self, contexts, rows, first):  # type: ignore[no-untyped-def]
        if scored:
            raise KeyboardInterrupt
        scored.append(rows)
        return real(self, contexts, rows, first)

    monkeypatch.setattr(probes.Prober, "scores", failing_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        _probe(embedded, range(7), tmp_path / "a.tsv")
    assert scored == [[0, 1]]  # batch_size 4 // 2 samples: two candidates a batch
    assert (tmp_path / ".a.running" / "0.tsv").exists()

    def counting(self, contexts, rows, first):  # type: ignore[no-untyped-def]
        scored.append(rows)
        return real(self, contexts, rows, first)

    monkeypatch.setattr(probes.Prober, "scores", counting)
    _probe(embedded, range(7), tmp_path / "a.tsv")
    assert scored == [[0, 1], [2, 3], [4, 5], [6]]  # 0 and 1 were not probed again
    assert not (tmp_path / ".a.running").exists()
    _probe(embedded, range(7), tmp_path / "b.tsv")
    assert read_scores(tmp_path / "a.tsv") == read_scores(tmp_path / "b.tsv")


# A 300k-identity run on the ADMIS preset: its selected contexts need 600k candidates. Shards
# of 1000 identities (49 faces each) and 1000 candidates (a 256 px DDPM face costs ~29 synthetic
# faces, config/frcsyn.yaml).
SCALE = {
    "datasets": {"syn_30k": {"identities": 300_000}, "context_only_30k": {"identities": 300_000}},
    "contexts": {"candidates": 600_000, "candidates_per_shard": 1000},
    "synthesis": {"ids_per_shard": 1000},
}
GPU_RULES = ("make_context_candidates", "probe_contexts", "synthesize")


def _planned_runtimes(output: str) -> dict[str, list[int]]:
    """Each GPU rule's planned jobs' runtimes (minutes), from a dry run's job listing."""
    runtimes: dict[str, list[int]] = {rule: [] for rule in GPU_RULES}
    for block in output.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        if rule in runtimes:
            resources = block.split("resources: ", 1)[1].split("\n", 1)[0]
            runtimes[rule].append(int(resources.split("runtime=")[1].split(",")[0]))
    return runtimes


def test_a_300k_identity_run_plans_the_context_stage_as_many_small_jobs(tmp_path: Path) -> None:
    """As many jobs as the shard sizes say, none with more work than a synthesis shard (the
    work of a job is its runtime: 10 minutes plus its items times their seconds per item)."""
    _paper_inputs(tmp_path)
    scale = tmp_path / "scale.yaml"
    scale.write_text(yaml.safe_dump(SCALE))
    started = time.perf_counter()
    result = snakemake(
        tmp_path, "-n", configfiles=(ROOT / "config" / "frcsyn.yaml", scale), timeout=300
    )
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    runtimes = _planned_runtimes(output)
    assert len(runtimes["make_context_candidates"]) == 600_000 // 1000
    assert len(runtimes["probe_contexts"]) == 600_000 // 5000
    assert len(runtimes["synthesize"]) == 300 + 10  # syn_30k's pool, and the uniform 10k
    largest_synthesis = max(runtimes["synthesize"])
    assert max(runtimes["make_context_candidates"]) <= largest_synthesis, runtimes
    assert max(runtimes["probe_contexts"]) <= largest_synthesis, runtimes
    # Measured 4-5 s on 2 loaded cores; the bound catches a plan that grows with the squares of
    # the job count, not the machine's speed.
    assert seconds < 60, f"the plan took {seconds:.1f} s"
