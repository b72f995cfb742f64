"""The Snakemake report of a finished run: one self-contained HTML file with the figures,
the views as tables and the Markdown summary; opened in headless Chromium, its figures
render (every image the report embeds is shown the way its "eye" button shows it, and
must decode to a non-empty picture). The report is made by the README's command exactly
as written (`snakemake --report results/report.html`, no --cores, no --snakefile) in a
folder laid out like a user's clone after the run: the repository's tracked files, the
session's finished run, and the run's config as config/config.yaml."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, copy_run, snakemake_env

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-pipe",
]

# Run in the opened report: wait for the report app to render its menu, then show every
# embedded image through the app's own view switch (what its "eye" button calls), wait
# for the <img> the app renders and decode it; returns what it saw.
CHECK_SCRIPT = """
(async () => {
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  const report = {app: false, menu: "", categories: Object.keys(categories), images: [], errors: []};
  try {
    for (let i = 0; i < 200 && !report.menu; i++) {  // React renders asynchronously
      await wait(50);
      report.menu = document.getElementById("app").innerText.slice(0, 400);
    }
    report.app = typeof app !== "undefined" && app !== null;
    for (const [path, entry] of Object.entries(results)) {
      if (!entry.mime_type.startsWith("image/")) continue;
      app.setView({content: "img", contentPath: entry.data_uri, resultPath: path});
      let img = null;
      for (let i = 0; i < 200; i++) {
        await wait(50);
        img = Array.from(document.querySelectorAll("#app img")).find((x) => x.src === entry.data_uri);
        if (img && img.complete) break;
      }
      if (img) { try { await img.decode(); } catch (e) { report.errors.push(path + ": " + e); } }
      report.images.push({path: path, found: !!img, width: img ? img.naturalWidth : 0,
                          height: img ? img.naturalHeight : 0});
    }
  } catch (e) { report.errors.push(String(e)); }
  return report;
})()
"""


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4 of the
    child; JSON messages ended by NUL), with the standard library only."""

    def __init__(self, binary: str, profile: Path):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds_3_and_4():
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = profile.with_suffix(".log")
        self._stderr = self.log.open("w")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=fds_3_and_4, pass_fds=(3, 4, to_child_r, from_child_w),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf, self._id = b"", 0

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium exited: {self.log.read_text()[-2000:]}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # events and other replies are skipped
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate_in(self, url: str, expression: str, timeout_s: float = 120) -> object:
        """Open `url`, wait for it to load, return the awaited value of `expression`."""
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        ready = f"document.readyState === 'complete' && location.href === {json.dumps(url)}"
        deadline = time.monotonic() + timeout_s
        while not self.call("Runtime.evaluate", {"expression": ready, "returnByValue": True},
                            session)["result"].get("value"):
            assert time.monotonic() < deadline, f"{url} did not load in {timeout_s} s"
            time.sleep(0.2)
        out = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True, "timeout": timeout_s * 1000}, session)
        assert "exceptionDetails" not in out, out["exceptionDetails"]
        return out["result"]["value"]

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_child)
        os.close(self._from_child)
        self._stderr.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium; installed from Debian's archive (apt-get) when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                       env=env, capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("headless Chromium is missing and could not be installed "
                    "(apt-get install chromium needs root and Debian's package archive)")
    return found


README_REPORT_COMMAND = "snakemake --report results/report.html"


def clone_with_run(baseline: Path, dest: Path) -> Path:
    """`dest` as a clone of this repository (its tracked files, as in the working tree)
    in which the session's baseline run has finished, with that run's config as the
    clone's config/config.yaml."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    copy_run(baseline, dest)
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(TINY))
    return dest


@pytest.fixture(scope="module")
def report_run(baseline, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = clone_with_run(baseline, tmp_path_factory.mktemp("report"))
    assert README_REPORT_COMMAND in (REPO / "README.md").read_text()
    proc = subprocess.run(README_REPORT_COMMAND.split(), cwd=run, capture_output=True, text=True,
                          env=snakemake_env(), timeout=600)
    return run, proc


@pytest.fixture(scope="module")
def report(report_run) -> Path:
    run, proc = report_run
    assert proc.returncode == 0, f"{README_REPORT_COMMAND} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return run / "results" / "report.html"


def test_readme_report_command_works_as_written(report_run):
    """The README's report command needs no --cores (it used to stop with "Workflow
    requires a total number of cores to be defined") and reruns nothing."""
    run, proc = report_run
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "requires a total number of cores" not in out
    assert (run / "results" / "report.html").stat().st_size > 50_000
    dry = subprocess.run(["snakemake", "-n"], cwd=run, capture_output=True, text=True, env=snakemake_env())
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]


def embedded_results(html: str) -> dict:
    m = re.search(r'<script id="results">\s*var results = (\{.*?\});\s*</script>', html, re.S)
    assert m, "no results in the report"
    return json.loads(m.group(1))


def test_report_is_self_contained_with_figures_tables_and_summary(report):
    html = report.read_text()
    results = embedded_results(html)
    names = {Path(p).name: r for p, r in results.items()}
    assert {"accuracy_vs_flops.png", "accuracy_vs_n.png", "adaptive.png", "accuracy_vs_seconds.png", "summary.md", "pareto.html",
            "compute_optimal.html", "accuracy_vs_flops.html", "claims.html", "adaptive.html"} <= set(names)
    assert "compute_optimal_size.png" not in names  # one model size: no such figure
    for r in results.values():
        assert r["data_uri"].startswith("data:"), r["name"]  # embedded, not linked
    pareto = base64.b64decode(names["pareto.html"]["data_uri"].split(",", 1)[1]).decode()
    assert "<table>" in pareto and "majority" in pareto
    summary = base64.b64decode(names["summary.md"]["data_uri"].split(",", 1)[1]).decode()
    assert "Pareto front" in summary and "The paper's claims, tested on this run" in summary
    claims = base64.b64decode(names["claims.html"]["data_uri"].split(",", 1)[1]).decode()
    assert "saturation" in claims and "verdict" in claims
    assert "Compute-optimal inference" in html  # the workflow description (report/workflow.rst)
    assert "Pareto front" in names["accuracy_vs_flops.png"]["caption"]
    assert "probe of the first 4" in names["adaptive.png"]["caption"]
    assert "Difficulty-adaptive allocation" in summary
    # the device is data: the caption says where it is named, the summary names it
    assert "named in every panel's title" in names["accuracy_vs_seconds.png"]["caption"]
    assert "### Latency: measured seconds per problem" in summary and "Measured on: **" in summary
    assert "### Pareto front (seconds on " in summary
    # nothing fetched from elsewhere when opened
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="https?://', html)


def test_figures_render_in_headless_chromium(report, chromium, tmp_path):
    browser = Chromium(chromium, tmp_path / "profile")
    try:
        check = browser.evaluate_in(report.as_uri(), CHECK_SCRIPT)
    finally:
        browser.close()
    assert check["app"] and not check["errors"], check
    assert "Results" in check["menu"] or "RESULTS" in check["menu"], check["menu"]
    assert {"Figures", "Tables", "Summary"} <= set(check["categories"])
    shown = {Path(i["path"]).name: i for i in check["images"]}
    assert {"accuracy_vs_flops.png", "accuracy_vs_n.png", "adaptive.png", "accuracy_vs_seconds.png"} <= set(shown)
    for name, img in shown.items():
        assert img["found"] and img["width"] > 300 and img["height"] > 200, (name, img)
