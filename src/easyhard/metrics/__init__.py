"""Measurements over runs: recovery times, aligned fractions and sample-complexity exponents."""

from easyhard.metrics.recovery import aligned_fraction, sustained_recovery
from easyhard.metrics.scaling import ScalingFit, bootstrap_scaling, fit_power_law, km_median, km_quantile

__all__ = ["ScalingFit", "aligned_fraction", "bootstrap_scaling", "fit_power_law", "km_median", "km_quantile",
           "sustained_recovery"]
