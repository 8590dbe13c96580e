"""Named, reproducible experiments: a typed config plus a function that runs it and returns results."""

from easyhard.experiments.reproduce import write_reproduction
from easyhard.experiments.staircase import PROFILES, StaircaseConfig, oracle_levels, profile, run_cell, run_staircase
from easyhard.experiments.theory_report import CANONICAL_SETTINGS, TheorySetting, evaluate_setting, run_theory_report

__all__ = [
    "CANONICAL_SETTINGS",
    "PROFILES",
    "StaircaseConfig",
    "TheorySetting",
    "evaluate_setting",
    "oracle_levels",
    "profile",
    "run_cell",
    "run_staircase",
    "run_theory_report",
    "write_reproduction",
]
