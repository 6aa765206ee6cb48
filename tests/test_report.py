"""The micro run's Snakemake report, rendered in headless Chromium as a reader sees it: the
results table's numbers on its first page, every image result decodes, a sample grid and the
ROC curves display; and a figure follows its data (a changed evaluation, a changed ROC plot).

Chromium is Debian's `chromium` package: installed here when missing and possible (root with
apt-get), else the browser test is skipped with the reason.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image
from workflow_runner import MICRO, snakemake

from synface.evaluation.table import COLUMNS

# Injected into a copy of the report: records the first page's text, then shows every image
# result in the report's own viewer (its `app` and `results` globals) and records whether the
# displayed <img> decoded, ending on a sample grid.
PROBE = """
<script>
function probeReport() {
  const record = (name, value) => document.body.setAttribute(name, JSON.stringify(value));
  record("data-first-page", document.getElementById("app").innerText);
  const images = Object.keys(results).filter((p) => results[p].mime_type.startsWith("image/"));
  const grid = images.find((p) => p.includes("figures/samples/"));
  const shown = [];
  const order = [...images.filter((p) => p !== grid), grid];
  function next(i) {
    if (i > 0) {
      const path = order[i - 1];
      const img = Array.from(document.images).find((x) => x.src === results[path].data_uri);
      const others = Array.from(document.images).filter((x) => x !== img);
      shown.push({path: path, width: img ? img.naturalWidth : -1,
                  complete: img ? img.complete : false,
                  others_broken: others.filter((x) => !x.complete || x.naturalWidth === 0).length});
    }
    if (i === order.length) { record("data-shown", shown); return; }
    app.setView({content: "img", contentPath: results[order[i]].data_uri, resultPath: order[i]});
    setTimeout(() => next(i + 1), 500);
  }
  next(0);
}
window.addEventListener("load", () => setTimeout(probeReport, 1000));
</script>
"""


def chromium() -> str:
    """The Chromium binary; installed with apt-get when missing and possible, else a skip."""
    found = shutil.which("chromium")
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("headless Chromium is missing and installing it needs root and apt-get")
    install = ["apt-get", "install", "-y", "chromium"]
    if subprocess.run(install, capture_output=True, timeout=1200).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=1200)
        subprocess.run(install, capture_output=True, timeout=1200)
    found = shutil.which("chromium")
    if found:
        return found
    pytest.skip("`apt-get install -y chromium` did not install Chromium (no package source?)")


def run_chromium(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--window-size=1400,1000", "--virtual-time-budget=60000", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)


@pytest.fixture(scope="module")
def report_html(micro_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`snakemake --report` of the micro run, written outside its workdir."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = snakemake(micro_run, "--report", str(out), "all", timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return out


def test_the_report_renders_the_table_and_figures(report_html: Path, micro_run: Path) -> None:
    binary = chromium()
    probe = report_html.with_name("probe.html")
    # Before the last </body>: the report's scripts hold the string "</body>" too.
    page, _, end = report_html.read_text().rpartition("</body>")
    probe.write_text(page + PROBE + "</body>" + end)
    dom = run_chromium(binary, "--dump-dom", probe.as_uri()).stdout
    first_page = json.loads(_attribute(dom, "data-first-page"))
    shown = json.loads(_attribute(dom, "data-shown"))
    # Every benchmark's mean ± std of every model, as the evaluation JSONs have them.
    for name in yaml.safe_load(MICRO.read_text())["datasets"]:
        figures = json.loads((micro_run / f"results/evaluation/{name}.json").read_text())
        for pack in COLUMNS:
            mean, std = figures["benchmarks"][pack]["accuracy"], figures["benchmarks"][pack]["std"]
            assert f"{100 * mean:.2f} ± {100 * std:.2f}" in first_page, (name, pack)
    paths = [entry["path"] for entry in shown]
    assert any("figures/samples/" in p for p in paths) and "results/figures/roc.png" in paths
    assert {"results/figures/recognition_training.png", "results/ldm/identity_check.png"} <= set(
        paths
    )
    # Each displayed image decoded at the size of the PNG the run wrote.
    for entry in shown:
        with Image.open(micro_run / entry["path"]) as image:
            assert entry["width"] == image.width, entry
    broken = [
        e["path"] for e in shown if not e["complete"] or e["width"] <= 0 or e["others_broken"]
    ]
    assert not broken, f"images that do not display: {broken}"
    screenshot = report_html.with_name("report.png")
    run_chromium(binary, f"--screenshot={screenshot}", report_html.as_uri())
    assert screenshot.stat().st_size > 10_000


def _attribute(dom: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', dom)
    assert found, f"the page never set {name}: the probe did not run to its end"
    return html.unescape(found.group(1))


def test_a_changed_evaluation_changes_the_roc_figure(micro_run: Path, tmp_path: Path) -> None:
    """The figure is drawn from the evaluation JSONs: flip one model's pairs on one benchmark
    and Snakemake redraws a different ROC plot (the JSON is newer than the figure)."""
    workdir = tmp_path / "w"
    shutil.copytree(micro_run, workdir, symlinks=True)
    before = (workdir / "results/figures/roc.png").read_bytes()
    evaluation = workdir / "results/evaluation/real.json"
    figures = json.loads(evaluation.read_text())
    lfw = figures["benchmarks"]["lfw"]
    lfw["issame"] = [not same for same in lfw["issame"]]
    evaluation.write_text(json.dumps(figures))
    result = snakemake(workdir, "results/figures/roc.png")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "plot_roc" in result.stdout + result.stderr
    changed = (workdir / "results/figures/roc.png").read_bytes() != before
    assert changed, "roc.png was redrawn the same from changed evaluation data"
