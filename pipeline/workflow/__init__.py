"""What the Snakefile reads when it parses the workflow: the plan and config overrides."""
