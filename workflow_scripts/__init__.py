"""z > 6.5 quasar candidates in HSC-SSP imaging: pipeline stages as importable modules.

Each stage module exposes typed, pure functions plus a thin command-line entry
(``python -m workflow_scripts.<stage>``) that the Snakemake rules call.
"""

__version__ = "0.1.0"
