"""Request-size distributions: every form parses, bad text names the flag, samples match the expected mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen.core.sizes import MAX_TOKENS, parse_size
from loadgen.errors import UsageError


@pytest.mark.parametrize(
    "text,kind,params",
    [
        ("128", "fixed", (128,)),
        (" 64 ", "fixed", (64,)),
        ("uniform:64,256", "uniform", (64, 256)),
        ("uniform: 5 , 5", "uniform", (5, 5)),
        ("normal:128,32", "normal", (128, 32)),
        ("lognormal:128,0.5", "lognormal", (128, 0.5)),
        ("choice:16,64,256", "choice", (16, 64, 256)),
        ("exp:100", "exp", (100,)),
        ("NORMAL:10,2.5", "normal", (10, 2.5)),
        ("normal:100,0", "fixed", (100,)),  # no spread: a fixed size written another way
    ],
)
def test_parse_forms(text, kind, params):
    d = parse_size(text, "--input-tokens")
    assert d.kind == kind
    assert d.params == tuple(float(p) for p in params)
    assert d.text == text.strip()


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "empty"),
        ("abc", "not a number"),
        ("12.5", "whole number"),
        ("0", "1.."),
        ("-3", "1.."),
        ("2000000", "1.."),
        ("nan", "finite"),
        ("inf", "finite"),
        ("uniform:10", "needs 2"),
        ("uniform:10,5", "high end"),
        ("uniform:0,5", "low end"),
        ("uniform:a,b", "not a number"),
        ("normal:128", "needs 2"),
        ("normal:128,-1", "sd"),
        ("normal:0,5", "mean"),
        ("lognormal:128,9", "sigma"),
        ("lognormal:0,1", "median"),
        ("choice:", "list of sizes"),
        ("choice:4,,8", "list of sizes"),
        ("choice:4,0", "sizes"),
        ("exp:0", "mean"),
        ("exp:1,2", "needs 1"),
        ("zipf:1.2", "unknown size form"),
    ],
)
@pytest.mark.parametrize("flag", ["--input-tokens", "--output-tokens"])
def test_bad_text_names_flag(text, needle, flag):
    with pytest.raises(UsageError) as info:
        parse_size(text, flag)
    msg = str(info.value)
    assert msg.startswith(flag + ":")
    assert needle in msg
    assert "\n" not in msg


def test_unknown_form_lists_the_accepted_forms():
    msg = str(pytest.raises(UsageError, parse_size, "zipf:1", "--output-tokens").value)
    for form in ("uniform:LO,HI", "normal:MEAN,SD", "lognormal:MEDIAN,SIGMA", "choice:", "exp:MEAN"):
        assert form in msg


@pytest.mark.parametrize(
    "text",
    [
        "uniform:64,256",
        "normal:128,32",
        "normal:3,5",  # heavily clipped at 1: the mean must include the clipping
        "lognormal:128,0.5",
        "lognormal:3,1.5",
        "lognormal:1000,4",  # a tail clipped at MAX_TOKENS
        "choice:16,64,256",
        "exp:2",  # rounding matters at small sizes
        "exp:0.3",
        "exp:500",
    ],
)
def test_sample_mean_matches_expected_value(text):
    d = parse_size(text, "--input-tokens")
    x = d.sample(np.random.default_rng(7), 200_000)
    assert x.dtype == np.int64
    assert x.min() >= 1 and x.max() <= MAX_TOKENS
    se = x.std() / math.sqrt(len(x))
    assert abs(x.mean() - d.mean) < 5 * se + 1e-9


def test_expected_value_of_clipped_normal_against_direct_sum():
    # E[max(1, round(X))] for X ~ N(3, 5) summed over the integers directly.
    from scipy import stats

    k = np.arange(-100, 101)
    p = stats.norm.cdf(k + 0.5, 3, 5) - stats.norm.cdf(k - 0.5, 3, 5)
    direct = float(np.sum(np.maximum(k, 1) * p))
    assert parse_size("normal:3,5").mean == pytest.approx(direct, rel=1e-9)
    assert parse_size("exp:2").mean == pytest.approx(1 + sum(math.exp(-(j - 0.5) / 2) for j in range(2, 200)))


def test_fixed_uniform_choice_values():
    rng = np.random.default_rng(1)
    assert (parse_size("77").sample(rng, 100) == 77).all()
    u = parse_size("uniform:3,6").sample(rng, 10_000)
    assert set(u.tolist()) == {3, 4, 5, 6}
    c = parse_size("choice:16,64,256").sample(rng, 10_000)
    assert set(c.tolist()) == {16, 64, 256}
    assert parse_size("uniform:3,6").mean == 4.5
    assert parse_size("choice:16,64,256").mean == 112


def test_sampling_is_reproducible():
    d = parse_size("lognormal:200,0.8")
    a = d.sample(np.random.default_rng(5), 1000)
    b = d.sample(np.random.default_rng(5), 1000)
    np.testing.assert_array_equal(a, b)


def test_describe_and_to_dict():
    d = parse_size("normal:128,32", "--output-tokens")
    assert "normal" in d.describe() and "128" in d.describe() and "32" in d.describe()
    assert d.to_dict() == {"kind": "normal", "text": "normal:128,32", "mean": 128, "sd": 32,
                           "expected": pytest.approx(128.0, abs=0.01)}
    assert parse_size("choice:1,2").to_dict()["values"] == [1, 2]
    assert parse_size("lognormal:100,0.25").to_dict()["sigma"] == 0.25
    assert parse_size("64").describe() == "fixed 64 tokens"
