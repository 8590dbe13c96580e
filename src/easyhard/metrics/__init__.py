"""Measurements over runs: recovery times, aligned fractions and sample-complexity exponents."""

from easyhard.metrics.recovery import aligned_fraction, sustained_recovery
from easyhard.metrics.scaling import ScalingFit, bootstrap_scaling, fit_power_law, km_median, km_quantile

__all__ = ["ScalingFit", "aligned_fraction", "bootstrap_scaling", "fit_power_law", "km_median", "km_quantile",
           "sustained_recovery"]
from easyhard.metrics.images import (
    GAUSSIAN_SPARSITY, EmergenceFit, Moments, convergence_step, covariance_error, emergence_law, emergence_steps,
    eps_loss_per_level, excess_kurtosis, fixed_noise, gaussian_mmse_eps, ica_filters, kurtosis_error, mean_error,
    mode_variance_ratios, mode_variances, moments, sampling_floor, skewness, skewness_error, sparsity_error,
    sparsity_ratio, whitened_mode_error, wiener_distance)

__all__ += ["GAUSSIAN_SPARSITY", "EmergenceFit", "Moments", "convergence_step", "covariance_error", "emergence_law",
            "emergence_steps", "eps_loss_per_level", "excess_kurtosis", "fixed_noise", "gaussian_mmse_eps",
            "ica_filters", "kurtosis_error", "mean_error", "mode_variance_ratios", "mode_variances", "moments",
            "sampling_floor", "skewness", "skewness_error", "sparsity_error", "sparsity_ratio",
            "whitened_mode_error", "wiener_distance"]
from easyhard.metrics.memorization import (  # noqa: E402
    MemorizationFraction, copies_from_distances, denoiser_similarity, fraction_with_interval, memorization_fraction,
    nearest_neighbours, paired_similarity, split_similarity, standardize, wilson_upper)

__all__ += ["MemorizationFraction", "copies_from_distances", "denoiser_similarity", "fraction_with_interval",
            "memorization_fraction", "nearest_neighbours", "paired_similarity", "split_similarity", "standardize",
            "wilson_upper"]
from easyhard.metrics.quality import (  # noqa: E402
    kl_to_density, knn_distances, knn_divergence, knn_entropy, mean_log_likelihood)

__all__ += ["kl_to_density", "knn_distances", "knn_divergence", "knn_entropy", "mean_log_likelihood"]
from easyhard.metrics.generalization import (  # noqa: E402
    empirical_distance_per_level, extremum_step, first_crossing, first_near_best, log_slope, loss_gap_per_level)

__all__ += ["empirical_distance_per_level", "extremum_step", "first_crossing", "first_near_best", "log_slope",
            "loss_gap_per_level"]
