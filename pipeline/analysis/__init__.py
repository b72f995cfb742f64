"""The analysis behind `aggregate`: statistics, claims, held-out choices, allocation,
latency, PRM quality, the DuckDB views, figures and the report."""
