"""Compute-optimal inference: the importable logic behind the Snakemake workflow.

Each stage is one module (`datasets`, `models`, `prompts`, `generate`, `grading`,
`replay`, `flops`, `aggregate`); rules call one function each. Heavy backends (vLLM,
torch) are imported lazily inside the functions that need them, so the pure modules
import fast and test without them.
"""

__version__ = "0.1.0"
