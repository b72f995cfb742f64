"""Pilot arith difficulties with the real workflow, then size a problem mix by power.

    python scripts/pilot_difficulty.py --workdir /tmp/pilot [--config config/config.yaml]
        [--problems 32] [--difficulty NAME=OPS:MAX_NUMBER ...] [--mix NAME=WEIGHT ...]
        [--target 0.05] [--analyse-only]

Runs the workflow (`snakemake --cores all`) in `--workdir` on a config derived from
`--config`: its model, prompt, sampling and PRMs, with `datasets` replaced by one arith
dataset per `--difficulty` (OPS operations, amounts up to MAX_NUMBER, the first
`--problems` of the test split), no greedy decoding, no tree search and one generate job
per dataset (one engine load). The value head is trained as the config says. A finished
workdir is reused (Snakemake reruns nothing), and `--analyse-only` only reads it.

Prints, per difficulty, from `results/inference.duckdb`: pass@1 (± se), majority@16,
best-of-16 and weighted majority@16 by the config's first PRM (aggregation `last`),
coverage@16, output tokens per sample, the generate job's measured load and work
seconds, and the sd of the paired per-problem difference best-of-N - majority@N (the
`power` table). With `--mix`, the same for the mix (weights are problem shares):
    mean d = sum_i w_i mean_i,   var d = sum_i w_i (var_i + (mean_i - mean d)^2),
and the minimum detectable difference at 80% power, two-sided 5%, MDE = (z_0.975 +
z_0.80) sd(d) / sqrt(n) (`pipeline.analysis.stats.mde`), at a few n, and the n that reaches
`--target`. Seconds measured on a loaded machine are what they are: compare tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.analysis import stats  # noqa: E402


def parse_difficulty(text: str) -> tuple[str, dict]:
    """'easy=1:10' -> ('easy', {'ops': 1, 'max_number': 10})."""
    name, _, spec = text.partition("=")
    ops, _, top = spec.partition(":")
    if not name or not ops.isdigit() or not top.isdigit():
        raise SystemExit(f"--difficulty {text!r}: expected NAME=OPS:MAX_NUMBER, e.g. easy=1:10")
    return name, {"ops": int(ops), "max_number": int(top)}


def pilot_config(base: dict, difficulties: dict[str, dict], problems: int) -> dict:
    config = json.loads(json.dumps(base))
    seed = next(iter(base["datasets"].values())).get("seed", 0)
    config["datasets"] = {
        name: {"source": "arith", "split": "test", "seed": seed, "levels": [d], "limit": problems}
        for name, d in difficulties.items()
    }
    config["sampling"]["greedy"] = False
    config["search"] = {}
    config["shards"] = {"problems": problems, "samples": config["sampling"]["n"]}
    return config


def mix_sd(parts: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(mean, sd) of d over a mix of (weight, mean_i, sd_i): the law of total variance."""
    total = sum(w for w, _, _ in parts)
    mean = sum(w * m for w, m, _ in parts) / total
    var = sum(w * (s * s + (m - mean) ** 2) for w, m, s in parts) / total
    return mean, math.sqrt(var)


def n_for(sd: float, target: float) -> int:
    """Smallest n with stats.mde(sd, n) <= target."""
    z = stats.Z95 + stats.Z80
    return math.ceil((z * sd / target) ** 2)


def analyse(workdir: Path) -> dict[str, dict]:
    import duckdb

    con = duckdb.connect(str(workdir / "results" / "inference.duckdb"), read_only=True)
    n_max = con.execute("SELECT max(n) FROM accuracy_vs_flops WHERE strategy = 'majority'").fetchone()[0]
    rows = con.execute(f"""
        SELECT dataset, strategy, n, accuracy, accuracy_se, output_tokens, num_problems
        FROM accuracy_vs_flops
        WHERE (strategy = 'coverage' AND n IN (1, {n_max})) OR (n = {n_max} AND (strategy = 'majority'
               OR (strategy IN ('best_of_n', 'weighted_majority') AND aggregation = 'last')))
    """).fetchall()
    out: dict[str, dict] = {}
    for ds, strategy, n, acc, se, tokens, num in rows:
        e = out.setdefault(ds, {"problems": num, "n": n_max})
        key = {"coverage": "pass@1" if n == 1 else f"cov@{n_max}"}.get(strategy, f"{strategy}@{n_max}")
        e[key] = acc
        if key == "pass@1":
            e["pass@1_se"], e["tokens"] = se, tokens
    for ds, sd, mean_d in con.execute("""
            SELECT p.dataset, p.sd_diff, avg(b.accuracy - m.accuracy)
            FROM power p JOIN point_problems b ON b.dataset = p.dataset
                AND b.point = split_part(p.comparison, ' - ', 1)
            JOIN point_problems m ON m.dataset = p.dataset AND m.problem_id = b.problem_id
                AND m.point = split_part(p.comparison, ' - ', 2)
            GROUP BY ALL""").fetchall():
        out[ds].update(sd_d=sd, mean_d=mean_d)
    for ds, load_s, work_s, tokens in con.execute("""
            SELECT dataset, sum(load_s), sum(work_s), sum(output_tokens) FROM timings
            WHERE stage = 'generate' GROUP BY ALL""").fetchall():
        if ds in out:
            out[ds].update(load_s=load_s, work_s=work_s, gen_tokens=tokens)
    con.close()
    return out


def report(out: dict[str, dict], mix: dict[str, float], target: float) -> None:
    n = next(iter(out.values()))["n"]
    cols = ["pass@1", "pass@1_se", f"majority@{n}", f"best_of_n@{n}", f"weighted_majority@{n}",
            f"cov@{n}", "tokens", "load_s", "work_s", "mean_d", "sd_d"]
    print("| difficulty | problems | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for ds, e in out.items():
        cells = [f"{e[c]:.3f}" if isinstance(e.get(c), float) else str(e.get(c, "")) for c in cols]
        print(f"| {ds} | {e['problems']} | " + " | ".join(cells) + " |")
    if not mix:
        return
    missing = set(mix) - set(out)
    if missing:
        raise SystemExit(f"--mix names difficulties that were not piloted: {sorted(missing)}")
    total = sum(mix.values())
    mean, sd = mix_sd([(w, out[d]["mean_d"], out[d]["sd_d"]) for d, w in mix.items()])
    expect = {c: sum(w * out[d][c] for d, w in mix.items()) / total
              for c in ("pass@1", f"majority@{n}", f"best_of_n@{n}", f"cov@{n}", "tokens")}
    print(f"\nmix {mix}: " + ", ".join(f"{k} {v:.3f}" for k, v in expect.items()))
    print(f"paired d = best_of_n@{n} - majority@{n}: mean {mean:.3f}, sd {sd:.3f}")
    for k in (64, 96, 128, 192, 256):
        print(f"  n = {k:4d}: MDE {stats.mde(sd, k):.3f}")
    print(f"  MDE {target} needs n = {n_for(sd, target)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--difficulty", action="append", default=[],
                    help="NAME=OPS:MAX_NUMBER (repeatable; default easy=1:10 hard=2:10)")
    ap.add_argument("--mix", action="append", default=[], help="NAME=WEIGHT (repeatable)")
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--analyse-only", action="store_true")
    a = ap.parse_args()

    difficulties = dict(map(parse_difficulty, a.difficulty or ["easy=1:10", "hard=2:10"]))
    mix = {k: float(v) for k, _, v in (m.partition("=") for m in a.mix)}
    a.workdir.mkdir(parents=True, exist_ok=True)
    if not a.analyse_only:
        config = pilot_config(yaml.safe_load(Path(a.config).read_text()), difficulties, a.problems)
        cfg = a.workdir / "pilot-config.yaml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                        "--directory", str(a.workdir), "--configfile", str(cfg), "--cores", "all"],
                       check=True, env=env)
    report(analyse(a.workdir), mix, a.target)


if __name__ == "__main__":
    main()
