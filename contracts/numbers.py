"""Exact numbers for energy and price, and integer micro-units for money.

Energy (kWh) and price (AUD/kWh) are :class:`fractions.Fraction`, parsed from their decimal
text so that ``0.165`` is exactly 165/1000; money on the ledger is an ``int`` of micro-units
of the ledger token. Floats appear only at the edges, for display.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction

MICRO = 1_000_000

# Bounds on every number read from outside, checked on the decimal text before any exact
# arithmetic (an exponent of 1e999999999 would otherwise keep a CPU busy for minutes).
MAX_MAGNITUDE_EXP = 15  # |x| < 10**15 (kWh, AUD/kWh, tokens, seconds: far above any use)
MAX_PLACES = 12  # at most 12 decimal places (a micro-unit is 6)
MAX_TEXT = 64  # characters of a number's text


def exact(value: object) -> Fraction:
    """Parse ``value`` (int, decimal string, float from TOML/JSON) into an exact fraction.

    A float is read through its shortest decimal repr, which is what the file said.
    Raises ``ValueError`` for anything that is not a finite number, or whose magnitude is
    10**15 or more, or (text and Decimal) that has more than 12 decimal places or over 64
    characters: the bounds are checked on the text in microseconds, before any exact
    arithmetic.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        if abs(value) >= 10**MAX_MAGNITUDE_EXP:
            raise ValueError(f"out of range: magnitude must be below 1e{MAX_MAGNITUDE_EXP}")
        return Fraction(value)
    if isinstance(value, float | str | Decimal):
        text = repr(value) if isinstance(value, float) else str(value).strip()
        if len(text) > MAX_TEXT:
            raise ValueError(f"not a number of at most {MAX_TEXT} characters: "
                             f"{text[:20]!r}…")
        try:
            dec = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
        if not dec.is_finite():
            raise ValueError(f"not a finite number: {value!r}")
        if isinstance(value, float):  # 17 digits at most, exponent within ±324: only the
            return Fraction(bounded(dec, value, places=400))  # magnitude is bounded
        return Fraction(bounded(dec, value))
    raise ValueError(f"not a number: {value!r}")


def bounded(dec: Decimal, shown: object = None, places: int = MAX_PLACES) -> Decimal:
    """``dec`` (trailing zeros dropped) if its magnitude is below 1e15 and it has at most
    ``places`` decimal places, else ValueError naming the value. Looks only at the
    sign/digits/exponent triple, never computes with the exponent."""
    if dec.is_zero():
        return Decimal(0)
    sign, digits, exponent = dec.as_tuple()
    assert isinstance(exponent, int)  # finite
    shown = dec if shown is None else shown
    if exponent + len(digits) > MAX_MAGNITUDE_EXP:
        raise ValueError(f"out of range: magnitude must be below 1e{MAX_MAGNITUDE_EXP}, got "
                         f"{shown!r}")
    zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))  # 1.500: 1 place
    if zeros + exponent < -places:
        raise ValueError(f"more than {places} decimal places: {shown!r}")
    return Decimal((sign, digits[:len(digits) - zeros], exponent + zeros))


def round_half_even(x: Fraction) -> int:
    """Round an exact fraction to the nearest integer, ties to even (banker's rounding)."""
    return round(x)


def to_micro(amount: Fraction) -> int:
    """Whole token amount -> integer micro-units (ties to even)."""
    return round_half_even(amount * MICRO)


def aud_to_micro(aud: Fraction, aud_per_token: Fraction) -> int:
    """An AUD amount -> integer micro-units of the token at the given exchange rate."""
    return to_micro(aud / aud_per_token)


def micro_to_token(micro: int) -> Fraction:
    return Fraction(micro, MICRO)


def fmt(x: Fraction, places: int = 6) -> str:
    """Decimal text of an exact fraction, rounded half-even to ``places``; for JSON/logs."""
    q = Decimal(1).scaleb(-places)
    value = (Decimal(x.numerator) / Decimal(x.denominator)).quantize(q)
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text
