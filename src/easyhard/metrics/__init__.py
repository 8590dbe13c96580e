"""Measurements over runs: recovery times, aligned fractions, sample-complexity exponents, image, memorisation,
quality, generalisation, phase-ordering and sequence metrics, and the one percentile bootstrap and power-law fit
behind every interval."""

from easyhard.metrics.bootstrap import (
    BootstrapMean, bootstrap_mean, bootstrap_replicates, check_level, percentile_interval)
from easyhard.metrics.recovery import aligned_fraction, sustained_recovery
from easyhard.metrics.scaling import (
    ScalingFit, bootstrap_scaling, fit_power_law, km_median, km_quantile, log_log_fit)

__all__ = ["BootstrapMean", "ScalingFit", "aligned_fraction", "bootstrap_mean", "bootstrap_replicates",
           "bootstrap_scaling", "check_level", "fit_power_law", "km_median", "km_quantile", "log_log_fit",
           "percentile_interval", "sustained_recovery"]
from easyhard.metrics.images import (
    GAUSSIAN_SPARSITY, EmergenceFit, Moments, convergence_step, covariance_error, emergence_law, emergence_steps,
    eps_loss, eps_loss_per_level, eps_loss_per_point, excess_kurtosis, fixed_noise, gaussian_mmse_eps, ica_filters,
    kurtosis_error, mean_error, mode_variance_ratios, mode_variances, moments, sampling_floor, skewness, skewness_error, sparsity_error,
    sparsity_ratio, whitened_mode_error, wiener_distance)

__all__ += ["GAUSSIAN_SPARSITY", "EmergenceFit", "Moments", "convergence_step", "covariance_error", "emergence_law",
            "emergence_steps", "eps_loss", "eps_loss_per_level", "eps_loss_per_point", "excess_kurtosis", "fixed_noise",
            "gaussian_mmse_eps", "ica_filters", "kurtosis_error", "mean_error", "mode_variance_ratios", "mode_variances", "moments",
            "sampling_floor", "skewness", "skewness_error", "sparsity_error", "sparsity_ratio",
            "whitened_mode_error", "wiener_distance"]
from easyhard.metrics.memorization import (  # noqa: E402
    MemorizationFraction, copies_from_distances, denoiser_similarity, distance_ratio, fraction_with_interval,
    memorization_fraction, nearest_neighbours, nearest_similarity, paired_similarity, split_similarity, standardize,
    threshold_label, wilson_upper)

__all__ += ["MemorizationFraction", "copies_from_distances", "denoiser_similarity", "distance_ratio",
            "fraction_with_interval", "memorization_fraction", "nearest_neighbours", "nearest_similarity",
            "paired_similarity", "split_similarity", "standardize", "threshold_label", "wilson_upper"]
from easyhard.metrics.quality import (  # noqa: E402
    kl_to_density, knn_distances, knn_divergence, knn_entropy, mean_log_likelihood)

__all__ += ["kl_to_density", "knn_distances", "knn_divergence", "knn_entropy", "mean_log_likelihood"]
from easyhard.metrics.generalization import (  # noqa: E402
    denoiser_distance, empirical_distance_per_level, extremum_step, first_crossing, first_near_best, log_slope,
    loss_gap_per_level)

__all__ += ["denoiser_distance", "empirical_distance_per_level", "extremum_step", "first_crossing", "first_near_best",
            "log_slope", "loss_gap_per_level"]
from easyhard.metrics.ordering import Marker, PhaseOrdering, locate, paired_difference, phase_ordering  # noqa: E402

__all__ += ["Marker", "PhaseOrdering", "locate", "paired_difference", "phase_ordering"]
from easyhard.metrics.sequences import (  # noqa: E402
    distance_histogram, exact_copies, grammatical_fraction, hamming_nearest, loss_decomposition, nn_divergence,
    pairwise_kl, sequence_kl, symmetric_kl, uturn_overlap, uturn_ratio)

__all__ += ["distance_histogram", "exact_copies", "grammatical_fraction", "hamming_nearest", "loss_decomposition",
            "nn_divergence", "pairwise_kl", "sequence_kl", "symmetric_kl", "uturn_overlap", "uturn_ratio"]
