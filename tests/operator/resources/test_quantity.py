"""Each expected value is what kube-apiserver 1.35 stored for the input (a dry-run ResourceQuota, whose resource
list is defaulted like a container's)."""

from __future__ import annotations

import pytest

from kvroute.operator.resources.quantity import canonical


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("1000m", "1"),
        ("0.5", "500m"),
        (".5", "500m"),
        (1, "1"),
        ("1500", "1500"),
        ("2000", "2k"),
        ("0.5M", "500k"),
        ("2.5E", "2500P"),
        ("500m", "500m"),
        ("0", "0"),
        ("0Gi", "0"),
    ],
)
def test_decimal_si_takes_the_largest_unit_with_an_integer_mantissa(given: int | str, stored: str) -> None:
    assert canonical(given) == stored


@pytest.mark.parametrize(
    ("given", "stored"),
    [("1n", "1m"), ("0.0000000001", "1m"), ("12.5m", "13m"), ("3.14159", "3142m"), ("7e-10", "1e-3")],
)
def test_values_round_up_to_whole_milli_units(given: str, stored: str) -> None:
    assert canonical(given) == stored


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("1024Mi", "1Gi"),
        ("0.5Gi", "512Mi"),
        ("1.5Gi", "1536Mi"),
        ("1536Mi", "1536Mi"),
        ("1023Ki", "1023Ki"),
        ("1234567Ki", "1234567Ki"),
        ("3Ei", "3Ei"),
        ("64Mi", "64Mi"),
    ],
)
def test_binary_si_takes_the_largest_power_of_1024(given: str, stored: str) -> None:
    assert canonical(given) == stored


@pytest.mark.parametrize(
    ("given", "stored"),
    [("0.5Ki", "512"), ("1.5Ki", "1536"), ("0.1Ki", "102400m"), ("8Ei", "9223372036854775807")],
)
def test_binary_values_below_1024_fractional_or_too_large_are_written_in_decimal(given: str, stored: str) -> None:
    assert canonical(given) == stored


@pytest.mark.parametrize(
    ("given", "stored"),
    [("1e3", "1e3"), ("15e2", "1500"), ("1.5e3", "1500"), ("129e6", "129e6"), ("1e22", "10e21")],
)
def test_decimal_exponents_stay_exponents_in_steps_of_three(given: str, stored: str) -> None:
    assert canonical(given) == stored


@pytest.mark.parametrize("spelling", ["+1k", "1.", "5E-3"])
def test_spellings_the_server_keeps_as_given_become_canonical_and_stay_so(spelling: str) -> None:
    """The server stores these as written; the operator's apply rewrites them once to a form it keeps."""
    once = canonical(spelling)
    assert once != spelling
    assert canonical(once) == once


def test_what_is_no_quantity_is_returned_as_given() -> None:
    assert canonical("lots") == "lots"
    assert canonical("1000E") == "1000E"  # beyond the largest unit
