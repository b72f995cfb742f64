"""Typed `--config key=value` overrides.

Snakemake parses a `--config` value with YAML's BaseLoader, so every scalar inside a
mapping or list arrives as a string: `--config 'sampling={n: 32}'` sets n to "32" and
the schema rejects it. `typed_overrides` re-reads those nested strings with YAML's
safe loader where that gives a number, a boolean or null (and only then: a string
such as a prompt template, "Question: {question}", stays as written), and
`apply_overrides` writes the typed values into the config Snakemake merged, at the
paths the command line named. The experiment's config itself comes from the Snakefile:
the embedded default when no `--configfile` is given, else only the given files.
"""

from __future__ import annotations

from typing import Any

import yaml


def typed(value: Any) -> Any:
    """A `--config` value with its nested scalar strings typed as YAML would type them."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, str):
        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if loaded is None or isinstance(loaded, (bool, int, float)):
            return loaded
    return value


def apply_overrides(config: dict, overrides: dict) -> dict:
    """Write `overrides` (the parsed `--config` entries), typed, into `config` in place:
    mappings merge key by key as Snakemake merges them, anything else replaces."""

    def merge(target: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                merge(target[key], value)
            else:
                target[key] = value

    merge(config, {k: typed(v) for k, v in overrides.items()})
    return config
