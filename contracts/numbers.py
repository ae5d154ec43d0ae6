"""Exact numbers for energy and price, and integer micro-units for money.

Energy (kWh) and price (AUD/kWh) are :class:`fractions.Fraction`, parsed from their decimal
text so that ``0.165`` is exactly 165/1000; money on the ledger is an ``int`` of micro-units
of the ledger token. Floats appear only at the edges, for display.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction

MICRO = 1_000_000


def exact(value: object) -> Fraction:
    """Parse ``value`` (int, decimal string, float from TOML/JSON) into an exact fraction.

    A float is read through its shortest decimal repr, which is what the file said.
    Raises ``ValueError`` for anything that is not a finite number.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float | str | Decimal):
        try:
            dec = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
        if not dec.is_finite():
            raise ValueError(f"not a finite number: {value!r}")
        return Fraction(dec)
    raise ValueError(f"not a number: {value!r}")


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
