"""Conversions between the x0-, eps- and score-parametrisations of a denoiser.

For a forward process x_t = a x0 + s eps (any a, s > 0; VP processes have a^2 + s^2 = 1):

    x0_hat = (x_t - s eps_hat) / a,       eps_hat = (x_t - a x0_hat) / s,
    score  = -eps_hat / s = (a x0_hat - x_t) / s^2        (Tweedie: score = grad log p_t(x_t)
                                                            when x0_hat = E[x0 | x_t]).

The maps are affine in the prediction, so errors scale exactly:

    eps-MSE = (a^2 / s^2) x0-MSE,         score-MSE = eps-MSE / s^2 = (a^2 / s^4) x0-MSE.

Every function takes tensors of shape (B, ...) and coefficients a, s that are floats or
per-sample tensors of shape (B,) (reshaped to (B, 1, ..., 1)) or tensors broadcastable to (B, ...).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from easyhard._validate import check_choice
from easyhard.diffusion.ou import Coefficient, check_positive_coefficient, per_sample

SPACES = ("x0", "eps", "score")


def _coefficients(pred: Tensor, a: Coefficient, s: Coefficient) -> tuple[Coefficient, Coefficient]:
    return (per_sample(check_positive_coefficient("a", a), pred),
            per_sample(check_positive_coefficient("s", s), pred))


def x0_to_eps(x0_hat: Tensor, x_t: Tensor, a: Coefficient, s: Coefficient) -> Tensor:
    """eps_hat = (x_t - a x0_hat) / s."""
    a, s = _coefficients(x0_hat, a, s)
    return (x_t - a * x0_hat) / s


def eps_to_x0(eps_hat: Tensor, x_t: Tensor, a: Coefficient, s: Coefficient) -> Tensor:
    """x0_hat = (x_t - s eps_hat) / a."""
    a, s = _coefficients(eps_hat, a, s)
    return (x_t - s * eps_hat) / a


def x0_to_score(x0_hat: Tensor, x_t: Tensor, a: Coefficient, s: Coefficient) -> Tensor:
    """score = (a x0_hat - x_t) / s^2 (Tweedie's formula when x0_hat = E[x0 | x_t])."""
    a, s = _coefficients(x0_hat, a, s)
    return (a * x0_hat - x_t) / s**2


def score_to_x0(score: Tensor, x_t: Tensor, a: Coefficient, s: Coefficient) -> Tensor:
    """x0_hat = (x_t + s^2 score) / a."""
    a, s = _coefficients(score, a, s)
    return (x_t + s**2 * score) / a


def eps_to_score(eps_hat: Tensor, s: Coefficient) -> Tensor:
    """score = -eps_hat / s."""
    return -eps_hat / per_sample(check_positive_coefficient("s", s), eps_hat)


def score_to_eps(score: Tensor, s: Coefficient) -> Tensor:
    """eps_hat = -s score."""
    return -per_sample(check_positive_coefficient("s", s), score) * score


_Converter = Callable[[Tensor, Tensor, Coefficient, Coefficient], Tensor]

_CONVERTERS: dict[tuple[str, str], _Converter] = {
    ("x0", "eps"): x0_to_eps,
    ("eps", "x0"): eps_to_x0,
    ("x0", "score"): x0_to_score,
    ("score", "x0"): score_to_x0,
    ("eps", "score"): lambda pred, x_t, a, s: eps_to_score(pred, s),
    ("score", "eps"): lambda pred, x_t, a, s: score_to_eps(pred, s),
}


def convert(pred: Tensor, from_space: str, to_space: str, x_t: Tensor,
            a: Coefficient, s: Coefficient) -> Tensor:
    """Convert a prediction between the spaces "x0", "eps" and "score" (formulas above).

    pred, x_t: (B, ...). Returns ``pred`` itself when the two spaces are equal.
    """
    check_choice("from_space", from_space, SPACES)
    check_choice("to_space", to_space, SPACES)
    if from_space == to_space:
        return pred
    return _CONVERTERS[from_space, to_space](pred, x_t, a, s)


def _mse_factor(space: str, a: Coefficient, s: Coefficient) -> Coefficient:
    """Factor c with (MSE in ``space``) = c * (x0-MSE): 1, a^2/s^2 or a^2/s^4."""
    return {"x0": 1.0, "eps": a**2 / s**2, "score": a**2 / s**4}[space]


def convert_mse(mse: Coefficient, from_space: str, to_space: str,
                a: Coefficient, s: Coefficient) -> Coefficient:
    """Rescale a mean squared error between spaces: eps-MSE = (a^2/s^2) x0-MSE,
    score-MSE = eps-MSE / s^2.

    ``mse``, ``a`` and ``s`` are floats or tensors that broadcast elementwise (e.g. all (B,)).
    """
    check_choice("from_space", from_space, SPACES)
    check_choice("to_space", to_space, SPACES)
    a = check_positive_coefficient("a", a)
    s = check_positive_coefficient("s", s)
    return mse * _mse_factor(to_space, a, s) / _mse_factor(from_space, a, s)
