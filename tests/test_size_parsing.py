"""Sizes on the command line: integers with binary units, exact or refused in one line."""

from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from mshare import cli
from mshare.units import parse_size

KIB, MIB, GIB, TIB, PIB = (1 << shift for shift in (10, 20, 30, 40, 50))

# Written from the rules, not from the parser: spelling -> bytes.
ACCEPTED = {
    "0": 0, "1": 1, "4096": 4096, "64M": 64 * MIB, "64m": 64 * MIB, "2G": 2 * GIB,
    "1.5G": 3 * GIB // 2, "1.5GiB": 3 * GIB // 2, "1.5gib": 3 * GIB // 2, "64MB": 64 * MIB,
    "0.5K": 512, "3T": 3 * TIB, "1P": PIB, " 2G ": 2 * GIB, "2 G": 2 * GIB,
    "1.00000000000000000000K": KIB, "0.25M": MIB // 4, "4096B": 4096,
    "18446744073709551615": (1 << 64) - 1, "16383P": 16383 * PIB,
}
REFUSED = [
    "", " ", "G", "abc", "-1", "+1", "1.3K", "1.00000000000000000001", "1.5", "0.5",
    "9" * 400, "1" + "0" * 63, "1e3", "0x10", "1_000", "1,5G", "1.G", ".5G", "1..5G",
    "1GG", "1GiBB", "1iB", "1 KB B", "5E", "١٠", "１０", "16384P", "18446744073709551616",
    "1.5\n2", "64M\0",
]
UNITS = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": TIB, "P": PIB}
LIMIT = (1 << 64) - 1


@pytest.mark.parametrize("text, expected", sorted(ACCEPTED.items()))
def test_accepted_spellings(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", REFUSED)
def test_refused_spellings(text):
    with pytest.raises(ValueError) as refused:
        parse_size(text)
    assert "\n" not in str(refused.value)


@given(st.integers(min_value=0, max_value=LIMIT), st.sampled_from(sorted(UNITS)),
       st.sampled_from(["", "B", "iB"]))
def test_whole_numbers_with_units(number, unit, suffix):
    text = f"{number}{unit}{suffix if unit or suffix == 'B' else ''}"
    expected = number * UNITS[unit]
    if expected > LIMIT:
        with pytest.raises(ValueError, match="larger than any address space"):
            parse_size(text)
    else:
        assert parse_size(text) == expected


@given(st.integers(min_value=0, max_value=10 ** 6), st.text("0123456789", min_size=1, max_size=25),
       st.sampled_from(sorted(UNITS)))
def test_fractions_are_exact_or_refused(whole, digits, unit):
    text = f"{whole}.{digits}{unit}"
    exact = Fraction(f"{whole}.{digits}") * UNITS[unit]
    if exact.denominator == 1 and exact <= LIMIT:
        assert parse_size(text) == exact.numerator
    elif exact.denominator == 1:
        with pytest.raises(ValueError, match="larger than any address space"):
            parse_size(text)
    else:
        with pytest.raises(ValueError, match="not a whole number of bytes"):
            parse_size(text)


@given(st.text(max_size=80))
def test_any_text_is_a_size_or_a_one_line_value_error(text):
    try:
        size = parse_size(text)
    except ValueError as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(size, int) and 0 <= size <= LIMIT


@pytest.mark.parametrize("arguments", [
    ["create", "some-name", "9" * 400],
    ["create", "some-name", "1.00000000000000000001"],
    ["create", "some-name", "12Q"],
    ["mount", "--hugepages", "1.3K"],
    ["doctor", "--size", "-5"],
    ["demo", "--size", "1e9"],
])
def test_every_command_refuses_a_bad_size_as_a_usage_error(arguments, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(arguments)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert error.strip().splitlines()[-1].startswith("mshare ")
    assert "error: argument" in error.strip().splitlines()[-1]
