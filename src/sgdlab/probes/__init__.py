"""Quantities: functions that compute a number from a model and a batch (SPEC §3, §4.1–§4.5).

Instruments (when and how often a quantity is computed, logged and plotted) live in
:mod:`sgdlab.instruments`; this package only computes.

========================  ==================================================================
``per_example``           ‖g_b‖² and Σ_b g_b² per coordinate from one backward (SPEC §3)
``noise``                 tr Σ, ‖G‖², B_simple, per-layer/per-coordinate B*, CABS, two-batch
``curvature``             top Hessian eigenvalue by HVP power iteration, 2/λ_max; top-k by
                          Lanczos, Hutchinson tr H and tr H², SLQ spectral density; of H or
                          the Gauss–Newton G, whole or per layer (blocks)
``norms``                 weight norms, effective and intrinsic LR (SPEC §4.5)
``gradient_stats``        Cockpit's cheap set: distance from init, update size, gradient
                          norms, norm / inner-product / orthogonality tests, mean GSNR,
                          histograms
``stationary``            stationary loss at fixed η, heat capacity dL/dη (SPEC §4.1, §4.2)
========================  ==================================================================
"""

from sgdlab.probes.curvature import (
    Eigenpairs,
    HessianOperator,
    HessianTrace,
    SpectralDensity,
    TopEigenvalue,
    hessian_trace,
    hessian_vector_product,
    layerwise,
    parameter_blocks,
    resolve_params,
    spectral_density,
    top_eigenvalues,
    top_hessian_eigenvalue,
)
from sgdlab.probes.noise import NoiseScale, TwoBatchEstimator, noise_scale, two_batch_estimates
from sgdlab.probes.norms import (
    angular_update,
    effective_lr,
    equilibrium_norm4,
    scale_invariant_report,
    weight_norms,
)
from sgdlab.probes.per_example import (
    PerExampleStats,
    per_example_sq_norms,
    per_example_stats,
    per_example_sum_sq,
)
from sgdlab.probes.stationary import (
    HeatCapacity,
    StationaryLoss,
    analyse_records,
    heat_capacity,
    quadratic_excess_loss,
    stationary_loss,
)

__all__ = [
    "Eigenpairs", "HeatCapacity", "HessianOperator", "HessianTrace", "NoiseScale",
    "PerExampleStats", "SpectralDensity", "StationaryLoss", "TopEigenvalue",
    "TwoBatchEstimator", "analyse_records", "angular_update", "effective_lr", "equilibrium_norm4",
    "heat_capacity", "hessian_trace", "hessian_vector_product", "layerwise", "noise_scale",
    "parameter_blocks",
    "per_example_sq_norms",
    "per_example_stats", "per_example_sum_sq", "quadratic_excess_loss", "resolve_params",
    "scale_invariant_report", "spectral_density", "stationary_loss", "top_eigenvalues",
    "top_hessian_eigenvalue", "two_batch_estimates",
    "weight_norms",
]
