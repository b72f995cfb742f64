"""Fault injection for tests/test_faults.py: holds chosen writes so that a test can
SIGKILL the workflow at a known point. Active only when FAULT_PAUSE is set, e.g.

    PYTHONPATH=tests/faultinject FAULT_PAUSE='[{"match": "results/samples/*.parquet"}]'

A rule holds every write whose destination (relative to the working directory)
matches the fnmatch pattern `match`:
    when="before_rename" (default): the complete temporary file exists, the destination
        does not ("killed in the middle of a write");
    when="after_rename": the destination is in place and the job is still running
        ("killed after the shard is written, before Snakemake records the job as done").
The hold lasts until the test creates "<temporary file or destination>.go" (that write
then goes on) or `hold` seconds (default 600) have passed. Nothing else changes: the
real `pipeline.core.io._atomic` does the write. The patch is applied when a process first
imports pipeline.core.io, so other processes (Snakemake itself, vLLM workers) pay nothing.
"""

import os

if os.environ.get("FAULT_PAUSE"):
    import importlib.abc
    import importlib.util
    import sys

    def _patch(module):
        import fnmatch
        import json
        import time
        from pathlib import Path

        rules = json.loads(os.environ["FAULT_PAUSE"])
        real = module._atomic

        def hold(path, signal, when):
            rel = os.path.relpath(os.path.abspath(path))
            for rule in rules:
                if rule.get("when", "before_rename") == when and fnmatch.fnmatch(rel, rule["match"]):
                    go = Path(f"{signal}.go")
                    deadline = time.monotonic() + rule.get("hold", 600)
                    while not go.exists() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    go.unlink(missing_ok=True)

        def _atomic(path, write, **kwargs):
            def held_write(tmp):
                write(tmp)
                hold(path, tmp, "before_rename")

            real(Path(path), held_write, **kwargs)
            hold(path, path, "after_rename")

        module._atomic = _atomic

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "pipeline.core.io":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _Finder())
