# Compute-optimal inference: sample once, cache, grade, replay every strategy, aggregate.
# Design: ARCHITECTURE.md in the team's shared folder; README.md for usage.
from snakemake.utils import min_version

min_version("9.0")


# A config given on the command line (--configfile) is the whole experiment: the
# embedded default is read only when none is given, never merged under one (README,
# "Configuration"). To extend the default on purpose, name it first:
# --configfile config/config.yaml my-additions.yaml (later files win key by key).
if not workflow.overwrite_configfiles:

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
