"""gptcourse.scaling: grids, sweep winners, 6ND, least squares, power laws, frontier, Chinchilla.

Pure Python arithmetic: exact answers are compared exactly or to 1e-12 relative (float
rounding); fits on noisy data are compared with numpy.polyfit to 1e-9 relative.
"""

from __future__ import annotations

import doctest
import math
import random

import numpy as np
import pytest

from gptcourse import scaling
from gptcourse.model import GPT, GPTConfig
from gptcourse.scaling import (
    PowerLaw,
    best_lr,
    chinchilla_optimal,
    compute_frontier,
    fit_power_law,
    linear_fit,
    log_grid,
    training_flops,
)


def test_doctests():
    assert doctest.testmod(scaling).failed == 0


# -- log_grid ----------------------------------------------------------------------------------


def test_log_grid_has_constant_ratio_and_exact_ends():
    grid = log_grid(1e-4, 1.0, 9)
    assert grid[0] == 1e-4 and grid[-1] == 1.0
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert ratios == pytest.approx([10**0.5] * 8, rel=1e-12)


def test_log_grid_single_value_and_descending():
    assert log_grid(3e-3, 1.0, 1) == [3e-3]
    assert log_grid(1.0, 0.01, 3) == pytest.approx([1.0, 0.1, 0.01], rel=1e-12)


@pytest.mark.parametrize("args", [(0.0, 1.0, 3), (1e-3, -1.0, 3), (1e-3, 1.0, 0), (1e-3, 1.0, 2.0)])
def test_log_grid_rejects_bad_input(args):
    with pytest.raises((ValueError, TypeError)):
        log_grid(*args)


# -- best_lr -------------------------------------------------------------------------------------


def test_best_lr_skips_diverged_runs():
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    assert best_lr(lrs, [2.0, 1.5, None, float("nan")]) == 1e-2
    assert best_lr(lrs, [2.0, float("inf"), 0.5, float("-inf")]) == 1e-1


def test_best_lr_tie_goes_to_smaller_lr_and_order_does_not_matter():
    assert best_lr([1e-1, 1e-3, 1e-2], [1.0, 1.0, 2.0]) == 1e-3


def test_best_lr_none_when_everything_diverged():
    assert best_lr([1e-3, 1e-2], [None, float("nan")]) is None
    assert best_lr([], []) is None
    with pytest.raises(ValueError):
        best_lr([1e-3], [1.0, 2.0])


# -- training_flops --------------------------------------------------------------------------------


def test_training_flops_is_six_n_d_and_matches_the_model_without_attention():
    cfg = GPTConfig(vocab_size=1024, block_size=64, n_layer=2, n_head=4, n_embd=64)
    model = GPT(cfg)
    n = model.num_params(non_embedding=True)
    assert training_flops(n, 1000) == 6 * n * 1000
    attention = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size
    assert training_flops(n, 1) == model.flops_per_token() - attention


def test_training_flops_rejects_negative():
    with pytest.raises(ValueError):
        training_flops(-1, 10)


# -- linear_fit and fit_power_law --------------------------------------------------------------------


def test_linear_fit_matches_numpy_polyfit_on_noisy_data():
    rng = random.Random(0)
    x = [rng.uniform(-5, 5) for _ in range(50)]
    y = [3.0 * v - 2.0 + rng.gauss(0, 0.5) for v in x]
    slope, intercept = linear_fit(x, y)
    ref_slope, ref_intercept = np.polyfit(x, y, 1)
    assert slope == pytest.approx(ref_slope, rel=1e-9)
    assert intercept == pytest.approx(ref_intercept, rel=1e-9)


def test_linear_fit_two_points_is_exact_and_rejects_degenerate_input():
    assert linear_fit([1.0, 3.0], [2.0, 6.0]) == pytest.approx((2.0, 0.0), abs=1e-12)
    with pytest.raises(ValueError):
        linear_fit([1.0, 1.0], [2.0, 3.0])
    with pytest.raises(ValueError):
        linear_fit([1.0], [2.0])


def test_fit_power_law_recovers_an_exact_law_with_floor():
    law = PowerLaw(a=50.0, b=0.3, floor=0.2)
    x = [1e8 * 4**k for k in range(6)]
    fit = fit_power_law(x, [law(v) for v in x], floor=0.2)
    assert fit.a == pytest.approx(50.0, rel=1e-9)
    assert fit.b == pytest.approx(0.3, rel=1e-9)
    assert fit.floor == 0.2
    assert fit.inverse(fit(1e10)) == pytest.approx(1e10, rel=1e-9)


def test_fit_power_law_matches_polyfit_in_log_space_on_noisy_data():
    rng = random.Random(1)
    x = [10 ** rng.uniform(9, 13) for _ in range(30)]
    y = [0.5 + 80 * v**-0.2 * math.exp(rng.gauss(0, 0.05)) for v in x]
    fit = fit_power_law(x, y, floor=0.5)
    slope, intercept = np.polyfit(np.log(x), np.log(np.array(y) - 0.5), 1)
    assert fit.b == pytest.approx(-slope, rel=1e-9)
    assert fit.a == pytest.approx(math.exp(intercept), rel=1e-9)


def test_fit_power_law_rejects_points_at_or_below_the_floor():
    with pytest.raises(ValueError, match="above floor"):
        fit_power_law([1.0, 2.0], [1.0, 0.5], floor=0.5)
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([0.0, 2.0], [1.0, 0.9])


# -- compute_frontier --------------------------------------------------------------------------------


def test_compute_frontier_keeps_runs_no_cheaper_run_beats():
    compute = [4.0, 1.0, 2.0, 8.0, 2.0, 16.0]
    loss = [2.0, 3.0, 3.5, 1.5, 2.5, 1.6]
    assert compute_frontier(compute, loss) == [1, 4, 0, 3]


def test_compute_frontier_skips_diverged_and_breaks_ties():
    assert compute_frontier([1, 2, 3], [None, float("nan"), 2.0]) == [2]
    assert compute_frontier([1, 1, 2], [2.0, 2.0, 2.0]) == [0]
    assert compute_frontier([], []) == []


# -- chinchilla_optimal --------------------------------------------------------------------------------


def test_chinchilla_optimal_spends_the_budget_at_the_given_ratio():
    for c, r in [(1e12, 20.0), (5.76e23, 20.0), (3.14e23, 1.7), (0.0, 20.0)]:
        n, d = chinchilla_optimal(c, r)
        assert training_flops(n, d) == pytest.approx(c, rel=1e-12, abs=1e-30)
        assert d == pytest.approx(r * n, rel=1e-12)


def test_chinchilla_optimal_reproduces_chinchilla_size():
    n, d = chinchilla_optimal(5.76e23)  # Hoffmann et al. 2022: 70B parameters, 1.4T tokens
    assert 65e9 < n < 75e9 and 1.3e12 < d < 1.5e12
