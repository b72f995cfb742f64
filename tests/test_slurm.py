"""The workflow on a real SLURM cluster through `--executor slurm` and profiles/slurm.

A single-node SLURM (munged, MariaDB, slurmdbd, slurmctld, slurmd; two simulated GPUs)
is started on localhost by scripts/slurm/cluster.sh in a temporary directory and
stopped again by the same script (only the daemons it started, by their pid files).
The Debian packages are installed when missing; the SLURM tests are skipped only where
that is impossible (no root, no apt, no package).

One SLURM run of a small config derived from TINY (the sampled cache of TINY, the
`logprob` PRM only) is cancelled with `scancel` while its first `score` job runs, then
run again. Checked: the cancelled run fails and names SLURM's job id and state; the
rerun submits only what is missing (the samples the first run generated keep their
file and mtime); GPU rules ran as GPU jobs and CPU rules without GPUs; and every
result equals the local `--cores 2` baseline run of TINY (same seed, same shard, so
the same vLLM samples). To stay within the CI budget the prepare stage (problems, the
embedded model's directory, model info: seconds of CPU work) is taken from the
baseline; generate, grade, score, replay, replay_prm and aggregate run as SLURM jobs.
"""

from __future__ import annotations

import copy
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import REPO, SNAKEMAKE, TINY, open_db, snakemake_env, write_config
from polars.testing import assert_frame_equal

CLUSTER = REPO / "scripts" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
GPU_RULES = {"generate", "score", "train_value_head", "search", "rollouts"}
RUN_TIMEOUT_S = 600  # per Snakemake run; `timeout -s INT` so Snakemake scancels its jobs

# TINY's sampled cache (same key and shards, so the same engine seed) with one cheap PRM,
# no greedy cache, no tree search
SMALL = copy.deepcopy(TINY)
SMALL["sampling"]["greedy"] = False
SMALL["prms"] = {"logprob": TINY["prms"]["logprob"]}
SMALL["search"] = {}


def workflow_rules() -> dict[str, bool]:
    """rule name -> whether its resources ask for a GPU, from rules/*.smk."""
    rules = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule \w+:)", smk.read_text()):
            m = re.match(r"rule (\w+):", block.strip())
            if m:
                rules[m.group(1)] = bool(re.search(r"^\s+gpu\s*=\s*(?:[1-9]|planned_gpus\()", block, re.M))
    return rules


def test_profile_covers_every_rule():
    """Every rule has runtime and memory; GPU rules ask for GPUs through the plugin's
    resources (never a hand-written --gres): a GPU type and its memory, the count left to
    the GPU memory plan (the rule's `gpu` resource); CPU rules for none."""
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert isinstance(profile["cores"], int) and profile["cores"] >= max(profile["set-threads"].values())
    per_rule = profile["set-resources"]
    rules = workflow_rules()
    assert {"generate", "score", "train_value_head", "grade", "replay", "aggregate"} <= set(rules)
    for rule, gpu in rules.items():
        if rule == "all":
            continue
        res = per_rule.get(rule)
        assert res and res.get("runtime") and res.get("mem_mb"), f"profiles/slurm: {rule} needs runtime and mem_mb"
        assert "slurm_extra" not in res and "gres" not in res, rule
        if gpu or rule in GPU_RULES:
            assert gpu, f"GPU rule {rule} has no planned `gpu` resource"
            assert "gpu" not in res and res["gpu_model"] and res["gpu_mem_mib"] > 0 and res["cpus_per_gpu"] >= 1, rule
            assert profile["set-threads"][rule] == res["cpus_per_gpu"], rule
        else:
            assert not {"gpu", "gpu_model", "gpu_mem_mib", "cpus_per_gpu"} & set(res), f"CPU rule {rule} asks for a GPU"
    for rule in GPU_RULES:  # `search` may not exist yet: covered in advance
        assert per_rule[rule]["gpu_mem_mib"] == 81920
    assert not {"gpu", "gpu_model", "gpu_mem_mib", "cpus_per_gpu"} & set(profile["default-resources"])


@dataclass
class Cluster:
    state: Path
    env: dict[str, str]
    cpus: int

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def slurm():
    install = subprocess.run(["bash", str(CLUSTER), "install"], capture_output=True, text=True)
    if install.returncode != 0:
        pytest.skip(f"SLURM cannot be installed here: {(install.stdout + install.stderr).strip()[-800:]}")
    # munged (as user munge) must reach its key: not under pytest's private tmp dir
    state = Path(tempfile.mkdtemp(prefix="slurm-ci-", dir="/tmp"))
    t0 = time.monotonic()
    try:
        start = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True,
                               text=True, timeout=300)
        assert start.returncode == 0, f"SLURM did not start:\n{start.stdout}\n{start.stderr}"
        env = snakemake_env()
        env.update(SLURM_CONF=start.stdout.strip().splitlines()[-1],
                   PATH=f"{state / 'bin'}:{env['PATH']}:/usr/sbin:/sbin")
        cpus = int(subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], env=env, capture_output=True,
                                  text=True, check=True).stdout.split()[0])
        print(f"\nSLURM started in {time.monotonic() - t0:.0f} s ({cpus} CPUs, state in {state})")
        yield Cluster(state, env, cpus)
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True, timeout=180)
        shutil.rmtree(state, ignore_errors=True)


def machine_profile(dest: Path, cpus: int) -> Path:
    """profiles/slurm with the sizes of this node: the fake GPU type (no memory to plan:
    the jobs run on its CPU), its CPUs, less memory; fast first status checks. Everything
    else as shipped."""
    profile = yaml.safe_load(PROFILE.read_text())
    for res in profile["set-resources"].values():
        if "gpu_model" in res:
            res.pop("gpu_mem_mib")
            res.update(gpu_model="fake", cpus_per_gpu=cpus, mem_mb=4000)
        else:
            res["mem_mb"] = 1000
    profile["set-threads"] = {rule: cpus for rule in profile["set-threads"]}
    profile["cores"] = cpus
    profile["slurm-init-seconds-before-status-checks"] = 1
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return dest


def seed_prepare_stage(baseline: Path, workdir: Path) -> None:
    """The baseline's problems, model directory and model info, with Snakemake's
    metadata (mtimes kept), so Snakemake sees them as done."""
    for sub in ("results/problems", "results/models"):
        shutil.copytree(baseline / sub, workdir / sub)
    shutil.copytree(baseline / ".snakemake" / "metadata", workdir / ".snakemake" / "metadata")


@dataclass(repr=False)
class Run:
    returncode: int
    output: str
    seconds: float

    def submitted(self) -> list[str]:
        """Rules of the SLURM jobs this run submitted, in order."""
        return re.findall(r"has been submitted with SLURM jobid \d+ \(log: .*?/slurm_logs/rule_(\w+)/", self.output)


def snakemake_slurm(cluster: Cluster, workdir: Path, profile: Path, *, cancel_rule: str | None = None):
    """One Snakemake run through the SLURM executor, as the README tells users to run
    it. With cancel_rule: scancel the first job of that rule once it runs."""
    cfg = write_config(workdir, SMALL)
    cmd = ["timeout", "-s", "INT", str(RUN_TIMEOUT_S), *SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(cfg), "--profile", str(profile),
           "--default-resources", "slurm_account=ci", "slurm_partition=debug"]
    log = workdir / f"snakemake-{time.monotonic_ns()}.log"
    t0 = time.monotonic()
    cancelled = None
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=cluster.env, cwd=workdir)
        try:
            while proc.poll() is None:
                if cancel_rule and cancelled is None:
                    for line in cluster.run("squeue", "-h", "-o", "%i|%k|%T").splitlines():
                        jobid, comment, state = line.split("|")
                        if comment.startswith(f"rule_{cancel_rule}_") and state == "RUNNING":
                            cluster.run("scancel", jobid)
                            cancelled = jobid
                time.sleep(0.5)
        finally:
            if proc.poll() is None:  # the test broke off: let Snakemake scancel its jobs
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
    return Run(proc.returncode, log.read_text(), time.monotonic() - t0), cancelled


def files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for p in (root / "results").rglob("*") if p.is_file()}


@dataclass(repr=False)
class SlurmRuns:
    workdir: Path
    cancelled_job: str | None
    first: Run
    after_first: dict[str, int]
    second: Run
    jobs: list[dict[str, str]]  # sacct rows of every job


@pytest.fixture(scope="module")
def slurm_runs(baseline, slurm, tmp_path_factory) -> SlurmRuns:
    workdir = tmp_path_factory.mktemp("slurm")
    seed_prepare_stage(baseline, workdir)
    profile = machine_profile(workdir / "profile", slurm.cpus)
    first, cancelled = snakemake_slurm(slurm, workdir, profile, cancel_rule="score")
    after_first = files(workdir)
    second, _ = snakemake_slurm(slurm, workdir, profile)
    print(f"\nSLURM runs: cancelled {first.seconds:.0f} s, rerun {second.seconds:.0f} s")
    rows = slurm.run("sacct", "-X", "-n", "-P", "-o", "JobID,Comment,State,AllocCPUS,AllocTRES").splitlines()
    jobs = [dict(zip(("id", "comment", "state", "cpus", "tres"), r.split("|"))) for r in rows]
    return SlurmRuns(workdir, cancelled, first, after_first, second, jobs)


@pytest.mark.integration
@pytest.mark.slurm
def test_cancelled_job_fails_the_run_with_slurms_state(slurm_runs):
    first = slurm_runs.first
    assert slurm_runs.cancelled_job, f"no running score job was seen to cancel:\n{first.output[-4000:]}"
    assert first.returncode not in (0, 124), first.output[-4000:]
    assert f"SLURM-job '{slurm_runs.cancelled_job}' failed, SLURM status is: 'CANCELLED'" in first.output, \
        first.output[-4000:]
    assert "Error in rule score" in first.output
    assert first.submitted()[0] == "generate" and "score" in first.submitted()


@pytest.mark.integration
@pytest.mark.slurm
def test_rerun_submits_only_what_is_missing(slurm_runs):
    second = slurm_runs.second
    assert second.returncode == 0, second.output[-6000:]
    submitted = second.submitted()
    assert "score" in submitted and "aggregate" in submitted
    assert set(submitted) <= {"score", "grade", "replay", "replay_prm", "aggregate"}, submitted
    assert len(submitted) == len(set(submitted)), submitted  # one job per missing output
    after = files(slurm_runs.workdir)
    kept = {p: m for p, m in slurm_runs.after_first.items() if not p.startswith("results/benchmarks/score")}
    assert any(p.startswith("results/samples/") for p in kept), "the first run generated no samples"
    changed = [p for p, m in kept.items() if after.get(p) != m]
    assert not changed, f"finished outputs were rewritten by the rerun: {changed}"


@pytest.mark.integration
@pytest.mark.slurm
def test_gpu_rules_ran_as_gpu_jobs_cpu_rules_without(slurm_runs, slurm):
    rules = workflow_rules()
    seen = set()
    for job in slurm_runs.jobs:
        # the plugin's job comment: rule_<rule> or rule_<rule>_wildcards_<values>
        rule = next((r for r in rules if re.fullmatch(rf"rule_{r}(_wildcards_.*)?", job["comment"])), None)
        assert rule, job
        seen.add(rule)
        if job["state"] != "COMPLETED":
            continue
        if rules[rule]:
            assert "gres/gpu=1" in job["tres"] or "gres/gpu:fake=1" in job["tres"], job
            assert int(job["cpus"]) == slurm.cpus, job  # cpus_per_gpu: vLLM / torch had the node's CPUs
        else:
            assert "gpu" not in job["tres"], job
            assert int(job["cpus"]) == 1, job
    assert {"generate", "score", "grade", "replay", "replay_prm", "aggregate"} <= seen


def _compare(slurm_con, base_con, table: str, selectors: list[str], order: list[str], where: str = "TRUE") -> int:
    # measured wall-clock times (pipeline/analysis/latency.py) differ from run to run
    measured = ["seconds", "load_s", "device"]
    query = f"SELECT * FROM {table} WHERE {where}"
    ours = pl.from_arrow(slurm_con.sql(query).to_arrow_table()).drop(measured, strict=False)
    theirs = pl.from_arrow(base_con.sql(query).to_arrow_table()).drop(measured, strict=False)
    key = pl.concat_str([pl.col(c).cast(pl.String).fill_null("<null>") for c in selectors], separator="|")
    theirs = theirs.filter(key.is_in(ours.select(key.alias("k"))["k"].implode()))
    assert ours.height > 0
    assert_frame_equal(ours.sort(order), theirs.select(ours.columns).sort(order), check_exact=False)
    return ours.height


@pytest.mark.integration
@pytest.mark.slurm
def test_results_equal_the_local_run(slurm_runs, baseline):
    assert slurm_runs.second.returncode == 0, slurm_runs.second.output[-6000:]
    # the Parquet caches, text included
    for sub in ("samples", "grades", "scores"):
        produced = sorted((slurm_runs.workdir / "results" / sub).rglob("*.parquet"))
        assert produced, sub
        for path in produced:
            rel = path.relative_to(slurm_runs.workdir)
            assert_frame_equal(pl.read_parquet(path), pl.read_parquet(baseline / rel), check_exact=False)
    # and the database
    with open_db(slurm_runs.workdir) as ours, open_db(baseline) as theirs:
        ids = ["problem_id", "sample_idx"]
        assert _compare(ours, theirs, "samples", ["dataset", "model", "kind", "key"], ids) == 24
        assert _compare(ours, theirs, "grades", ["dataset", "model", "kind", "key"], ids) == 24
        assert _compare(ours, theirs, "scores", ["dataset", "model", "key", "prm"], ids) == 24
        # (the difficulty-adaptive rows are left out: they choose among every point of the
        # run, and the baseline's config has more of them)
        n = _compare(ours, theirs, "replay", ["dataset", "model", "prm", "aggregation", "strategy"],
                     ["prm", "aggregation", "strategy", "n", "problem_id"], where="strategy NOT LIKE 'adaptive%'")
        strategies = {r[0] for r in ours.execute("SELECT DISTINCT strategy FROM replay").fetchall()}
        assert {"majority", "coverage"} <= strategies and n > 0
