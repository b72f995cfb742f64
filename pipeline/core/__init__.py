"""Shared utilities every layer may use; they import nothing else of the pipeline."""
