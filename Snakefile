# z > 6.5 quasar candidates in HSC-SSP imaging with contrastive learning.
# Architecture and data contracts: README.md ("Outputs"); stages live in workflow_scripts/.

from workflow_scripts.config import validate_config, ConfigError


configfile: "config.yaml"


report: "report/workflow.rst"


# Validate before any job: a wrong key/type/value stops here, naming the key.
try:
    config.update(validate_config(config, source_name="config (config.yaml + --config overrides)"))
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


include: "rules/common.smk"
include: "rules/catalog.smk"
include: "rules/select.smk"
include: "rules/cutouts.smk"
include: "rules/tensors.smk"
include: "rules/train.smk"
include: "rules/candidates.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
