"""Mock HSC-SSP Wide sky with known truth (see DESIGN.md, ``source: mock``).

    from workflow_scripts.sky import SkyBox, SkyConfig, simulate_shard
    catalog_df, truth_df = simulate_shard(box, shard_name="cosmos_a", seed=20240715, sky=sky)
"""

from .config import SkyBox, SkyConfig
from .simulate import TRUTH_COLUMNS, simulate_shard, stable_hash

__all__ = ["SkyBox", "SkyConfig", "TRUTH_COLUMNS", "simulate_shard", "stable_hash"]
