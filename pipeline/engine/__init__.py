"""The policy model: its sources and parameter counts, and the vLLM engine that runs it."""
