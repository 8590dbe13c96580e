"""Named, reproducible experiments: a typed config plus a function that runs it and returns results."""

from easyhard.experiments.theory_report import (
    CANONICAL_SETTINGS,
    TheorySetting,
    evaluate_setting,
    run_theory_report,
    write_theory_report,
)

__all__ = ["CANONICAL_SETTINGS", "TheorySetting", "evaluate_setting", "run_theory_report", "write_theory_report"]
