"""Named, reproducible experiments: a validated config, named profiles, a run and a report section each,
found by name through :mod:`easyhard.experiments.registry`."""

from easyhard.experiments.registry import (
    EXPERIMENTS,
    MAIN_JOB,
    REGISTRY,
    Experiment,
    Option,
    RunContext,
    build_config,
    get_experiment,
    make_config,
    register,
)
from easyhard.experiments.staircase import PROFILES, StaircaseConfig, oracle_levels, profile, run_cell, run_staircase
from easyhard.experiments.theory_report import CANONICAL_SETTINGS, TheorySetting, evaluate_setting, run_theory_report

__all__ = [
    "CANONICAL_SETTINGS",
    "EXPERIMENTS",
    "Experiment",
    "MAIN_JOB",
    "Option",
    "PROFILES",
    "REGISTRY",
    "RunContext",
    "StaircaseConfig",
    "TheorySetting",
    "build_config",
    "evaluate_setting",
    "get_experiment",
    "make_config",
    "oracle_levels",
    "profile",
    "register",
    "run_cell",
    "run_staircase",
    "run_theory_report",
]
