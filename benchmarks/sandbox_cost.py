"""What the code-grading sandbox costs: per execution, and grading HumanEval x 16.

    python benchmarks/sandbox_cost.py [--runs 100] [--workers 1,2,4,8,16]
        [--samples results/samples/humaneval/smollm2-135m/KEY] [--config config/humaneval.yaml]

1. Cost per execution, side by side: one HumanEval test (HumanEval/0's canonical
   solution) run `--runs` times one after another (a) in a fresh bubblewrap sandbox
   with the launcher and the harness (pipeline/tasks/sandbox.py, code_harness.py), the
   way the grade stage runs a program, and (b) the same interpreter, launcher and
   harness without bwrap (a plain subprocess; only this trusted program is ever run so).
   Prints wall milliseconds per execution and the CPU milliseconds of the processes
   (user + system of everything started, from a cpuacct cgroup; root only), and the
   sandbox's overhead and ratio.
2. Throughput: the same executions with 1, 2, 4, ... sandboxes at once (`--workers`):
   executions per second. Starting a sandbox is mostly waiting in the kernel (namespace
   set-up and tear-down), not CPU, so more sandboxes than cores pay off.
3. HumanEval x 16: grading 164 x 16 = 2,624 executions, every sample run (no
   de-duplication of identical programs), with the config's `execution` limits and the
   grade stage's default workers (4 per core). The samples: a finished sampled cache of
   the config (`--samples`, its shards), else each problem's canonical solution 16
   times (all pass: the floor of the cost; model samples add failures and timeouts).
   Prints the wall time, the status counts and the time lost to timeouts.
4. The same grading as the grade stage does it, identical programs of a problem run
   once (`grade_code`'s default): the distinct executions, the wall time beside
   part 3's, and how many samples' statuses differ between the two (timeouts only,
   where a program near the wall-clock limit lands on either side of it).

The machine may be shared: the load average before each part is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class CpuMeter:
    """CPU seconds of this process and everything it starts, sandboxes included, from a
    cgroup v1 cpuacct group of its own (root). bwrap does not reap its sandbox's init,
    so getrusage(RUSAGE_CHILDREN) misses the sandboxed processes. Kernel work done
    later in worker threads (a network namespace's tear-down) is not counted.
    None where no cpuacct group can be made."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self) -> None:
        self.group = self.ROOT / f"sandbox-cost-{os.getpid()}"
        try:
            self.group.mkdir()
            (self.group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            self.group = None

    def seconds(self) -> float | None:
        return None if self.group is None else int((self.group / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        if self.group is not None:
            (self.ROOT / "cgroup.procs").write_text(str(os.getpid()))
            self.group.rmdir()


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--workers", default="1,2,4,8,16")
    ap.add_argument("--config", default=str(REPO / "config" / "humaneval.yaml"))
    ap.add_argument("--samples", help="a sampled cache folder of the config's HumanEval run (default: canonical x 16)")
    ap.add_argument("--n", type=int, default=16, help="samples per problem for part 3")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip (1,2,3,4; 4 needs 3)")
    a = ap.parse_args()

    import yaml

    from pipeline.tasks import code, code_harness, datasets
    from pipeline.tasks.sandbox import Limits, Sandbox

    config = yaml.safe_load(Path(a.config).read_text())
    [(name, dcfg)] = [(n, d) for n, d in config["datasets"].items() if code.is_code(d)][:1]
    execution = dcfg.get("execution", {})
    limits = Limits.from_config(execution)
    sandbox = Sandbox(limits, python=execution.get("python"))
    print(f"sandbox: {json.dumps(sandbox.check())}")
    print(f"cores: {len(os.sched_getaffinity(0))}; {_load()}")
    problems = datasets.load_problems(name, {k: v for k, v in dcfg.items() if k != "limit"})
    meta = json.loads(problems["metadata"][0])
    prompt_cfg = {"format": "plain", "template": "{question}\n"}
    payload = {"program": code.program(prompt_cfg, problems["question"][0], meta["canonical_solution"], meta["entry_point"]),
               "test": problems["answer"][0], "entry_point": meta["entry_point"]}
    script = code_harness.script()
    skip = set(a.skip.split(","))

    meter = CpuMeter()
    try:
        _parts(a, skip, sandbox, script, payload, limits, execution, problems, prompt_cfg, meter)
    finally:
        meter.close()


def _ms(cpu: float | None) -> str:
    return "     n/a CPU" if cpu is None else f"{cpu * 1e3:7.1f} ms CPU"


def _parts(a, skip, sandbox, script, payload, limits, execution, problems, prompt_cfg, meter) -> None:
    import polars as pl

    from pipeline.tasks import code_grading
    from pipeline.tasks.sandbox import LAUNCHER

    def cpu_now() -> float:
        return meter.seconds() or 0.0

    if "1" not in skip:
        # (a) sandboxed, one after another
        cpu0, t0 = cpu_now(), time.monotonic()
        for _ in range(a.runs):
            ex = sandbox.run(script, payload)
            assert ex.messages and ex.messages[-1]["status"] == "pass", ex
        sand_wall, sand_cpu = (time.monotonic() - t0) / a.runs, (cpu_now() - cpu0) / a.runs
        # (b) the same interpreter, launcher and harness, no bwrap
        argv_plain = [str(sandbox.python), "-B", "-s", "-S", "-c", LAUNCHER]
        cpu0, t0 = cpu_now(), time.monotonic()
        for _ in range(a.runs):
            r, w = os.pipe()
            job = json.dumps({"nonce": "0" * 32, "rlimits": limits.rlimits(), "script": script, "payload": payload})
            proc = subprocess.run([*argv_plain, str(w)], input=job.encode(), pass_fds=(w,), capture_output=True,
                                  env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"})
            os.close(w)
            got = os.read(r, 1 << 16)
            os.close(r)
            assert proc.returncode == 0 and b'"pass"' in got, (proc, got)
        plain_wall, plain_cpu = (time.monotonic() - t0) / a.runs, (cpu_now() - cpu0) / a.runs
        if meter.seconds() is None:
            sand_cpu = plain_cpu = None
        print(f"\n1. per execution ({a.runs} runs, one at a time; {_load()}):")
        print(f"   sandboxed  {sand_wall * 1e3:7.1f} ms wall  {_ms(sand_cpu)}")
        print(f"   plain      {plain_wall * 1e3:7.1f} ms wall  {_ms(plain_cpu)}")
        extra = "" if sand_cpu is None else f", {(sand_cpu - plain_cpu) * 1e3:.1f} ms CPU ({sand_cpu / plain_cpu:.2f}x)"
        print(f"   sandbox overhead {(sand_wall - plain_wall) * 1e3:.1f} ms wall ({sand_wall / plain_wall:.2f}x){extra}")

    if "2" not in skip:
        print(f"\n2. throughput ({a.runs} sandboxed executions per setting; {_load()}):")
        for w in [int(x) for x in a.workers.split(",")]:
            cpu0, t0 = cpu_now(), time.monotonic()
            with ThreadPoolExecutor(w) as pool:
                done = list(pool.map(lambda _: sandbox.run(script, payload), range(a.runs)))
            wall = time.monotonic() - t0
            cpu = None if meter.seconds() is None else (cpu_now() - cpu0) / a.runs
            assert all(e.messages and e.messages[-1]["status"] == "pass" for e in done)
            print(f"   {w:3d} at once: {a.runs / wall:6.1f} executions/s ({wall / a.runs * 1e3:.1f} ms each; {_ms(cpu)})")

    if "3" not in skip:
        if a.samples:
            shards = sorted(Path(a.samples).glob("*.parquet"))
            samples = pl.concat([pl.read_parquet(f, columns=["problem_id", "sample_idx", "text"]) for f in shards])
            prompt = json.loads((Path(a.samples) / "key.json").read_text())["prompt"]
            what = f"the cache {a.samples}"
        else:
            canon = [json.loads(m)["canonical_solution"] for m in problems["metadata"]]
            samples = pl.DataFrame({"problem_id": [p for p in problems["problem_id"] for _ in range(a.n)],
                                    "sample_idx": [i for _ in range(problems.height) for i in range(a.n)],
                                    "text": [c for c in canon for _ in range(a.n)]})
            prompt, what = prompt_cfg, f"the canonical solutions x {a.n}"
        samples = samples.filter(pl.col("problem_id").is_in(problems["problem_id"].to_list()))
        workers = int(execution.get("workers", 0)) or 4 * len(os.sched_getaffinity(0))
        print(f"\n3. grading {samples.height} executions ({what}; {workers} sandboxes at once; {_load()}):")
        cpu0, t0 = cpu_now(), time.monotonic()
        grades, summary = code_grading.grade_code(samples, problems, prompt=prompt, sandbox=sandbox,
                                                  workers=workers, dedupe=False)
        wall = time.monotonic() - t0
        slow = grades.filter(pl.col("status") == "timeout").height
        cpu = None if meter.seconds() is None else cpu_now() - cpu0
        print(f"   {wall:.1f} s wall ({wall / samples.height * 1e3:.1f} ms per execution; "
              f"{'n/a' if cpu is None else f'{cpu:.1f} s'} CPU); statuses {summary['status']}; "
              f"{slow} timeouts (each holds a sandbox for up to {limits.timeout_s:g} s); {_load()}")

        if "4" not in skip:
            print(f"\n4. the same samples as the grade stage grades them (identical programs once; {_load()}):")
            t0 = time.monotonic()
            once, summary1 = code_grading.grade_code(samples, problems, prompt=prompt, sandbox=sandbox,
                                                      workers=workers)
            wall1 = time.monotonic() - t0
            differ = int((once["status"] != grades["status"]).sum())
            print(f"   {summary1['executions']} executions for {once.height} samples: {wall1:.1f} s wall "
                  f"({wall1 / wall:.2f}x part 3's {wall:.1f} s); statuses {summary1['status']}; "
                  f"{differ} samples' statuses differ from part 3; {_load()}")


if __name__ == "__main__":
    main()
