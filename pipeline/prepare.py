"""The prepare stage: problems as Parquet; local model directories and their info.

    python -m pipeline.prepare problems --name arith --spec '{"source": "arith", ...}' --out F
    python -m pipeline.prepare embedded --spec '{"path": "embedded:smollm2-135m"}' --out DIR
    python -m pipeline.prepare model --name m --spec '{"path": ...}' [--model-dir DIR] --out info.json
"""

from __future__ import annotations

import argparse
import json

from pipeline.core import integrity, io, schemas
from pipeline.engine import models
from pipeline.tasks import datasets


def write_problems(name: str, cfg: dict, out: str) -> None:
    df = schemas.conform(datasets.load_problems(name, cfg), schemas.PROBLEMS, f"dataset {name}")
    io.write_parquet(df, out)
    print(f"dataset {name}: {df.height} problems -> {out}")


def write_model_info(name: str, cfg: dict, model_dir: str | None, out: str) -> None:
    resolved = models.resolve_dir(cfg["path"], model_dir)
    models.write_info(name=name, path=cfg["path"], revision=cfg.get("revision"), model_dir=resolved, out=out)
    print(f"model {name}: {resolved} -> {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["problems", "embedded", "model"])
    ap.add_argument("--name")
    ap.add_argument("--spec", required=True, help="the config entry, as JSON")
    ap.add_argument("--model-dir")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.model_dir:  # a dequantised embedded model: checked against its SHA256SUMS
        integrity.check_inputs([a.model_dir])
    spec = json.loads(a.spec)
    if a.what == "problems":
        write_problems(a.name, spec, a.out)
    elif a.what == "embedded":
        models.build_embedded(spec["path"], a.out)
    else:
        write_model_info(a.name, spec, a.model_dir, a.out)


if __name__ == "__main__":
    main()
