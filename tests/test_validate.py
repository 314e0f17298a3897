"""gptcourse.validate: TypeError for a wrong type, ValueError for a wrong value, one wording."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from gptcourse import validate


@pytest.mark.parametrize("bad", [True, False, 1.0, "3", None, [1]])
def test_integer_refuses_other_types_with_type_error(bad):
    with pytest.raises(TypeError, match=r"n must be an int, got"):
        validate.integer("n", bad)


def test_integer_accepts_numpy_integers_as_int():
    out = validate.integer("n", np.int64(7), min=1)
    assert out == 7 and type(out) is int


@pytest.mark.parametrize(("value", "kw", "message"), [
    (0, {"min": 1}, "n must be >= 1, got 0"),
    (11, {"max": 10}, "n must be <= 10, got 11"),
    (-1, {"min": 0, "max": 5}, r"n must be in \[0, 5\], got -1"),
])
def test_integer_out_of_range_is_a_value_error_naming_the_range(value, kw, message):
    with pytest.raises(ValueError, match=message):
        validate.integer("n", value, **kw)


@pytest.mark.parametrize("bad", [True, "0.5", None, 1j])
def test_number_refuses_other_types_with_type_error(bad):
    with pytest.raises(TypeError, match="p must be a number"):
        validate.number("p", bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_number_refuses_non_finite_values_by_default(bad):
    with pytest.raises(ValueError, match="finite"):
        validate.number("p", bad)


def test_nan_never_passes_a_bound_even_when_non_finite_is_allowed():
    assert validate.number("p", math.inf, finite=False) == math.inf
    with pytest.raises(ValueError):
        validate.number("p", math.nan, min=0, finite=False)


def test_open_and_closed_ends():
    assert validate.number("p", 1, min=0, max=1, min_open=True) == 1.0
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\], got 0.0"):
        validate.number("p", 0.0, min=0, max=1, min_open=True)
    with pytest.raises(ValueError, match="p must be < 1"):
        validate.number("p", 1.0, max=1, max_open=True)
    assert validate.number("p", 5e-324, min=0, min_open=True) == 5e-324


@pytest.mark.parametrize("bad", [0, 1, "true", None])
def test_flag_is_exactly_true_or_false(bad):
    with pytest.raises(TypeError, match="f must be True or False"):
        validate.flag("f", bad)
    assert validate.flag("f", True) is True


def test_choice_lists_the_options():
    assert validate.choice("mode", "b", ("a", "b")) == "b"
    with pytest.raises(ValueError, match=re.escape("mode must be one of 'a' | 'b', got 'c'")):
        validate.choice("mode", "c", ("a", "b"))
