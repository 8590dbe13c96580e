"""Measurements over runs: recovery times and aligned fractions."""

from easyhard.metrics.recovery import aligned_fraction, sustained_recovery

__all__ = ["aligned_fraction", "sustained_recovery"]
