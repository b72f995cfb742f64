# Compute-optimal inference: sample once, cache, grade, replay every strategy, aggregate.
# Design: ARCHITECTURE.md in the team's shared folder; README.md for usage.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/prepare.smk"
include: "rules/generate.smk"
include: "rules/grade.smk"
include: "rules/score.smk"
include: "rules/replay.smk"
include: "rules/search.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        rules.aggregate.output,
