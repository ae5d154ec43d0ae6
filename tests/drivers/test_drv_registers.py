"""Register codecs: types, word order and scale, both ways."""

from __future__ import annotations

import pytest

from drivers.protocol.registers import TYPES, Codec


@pytest.mark.parametrize("kind", sorted(set(TYPES) - {"bit"}))
@pytest.mark.parametrize("order", ["big", "little"])
def test_round_trip(kind: str, order: str) -> None:
    codec = Codec(kind, order, 0.01)
    assert codec.decode(codec.encode(123.45)) == pytest.approx(123.45, rel=1e-6)


def test_word_orders_are_mirror_images() -> None:
    big, little = Codec("u32", "big").encode(0x12345678), Codec("u32", "little").encode(0x12345678)
    assert big == [0x1234, 0x5678] and little == [0x5678, 0x1234]


def test_pzem017_power_low_word_first() -> None:
    """The PZEM-017 manual's example: power 0x0000_0258 at 0.1 W (60.0 W), low word first."""
    assert Codec("u32", "little", 0.1).decode([0x0258, 0x0000]) == pytest.approx(60.0)


def test_sdm630_float_high_word_first() -> None:
    assert Codec("f32", "big").decode([0x4366, 0x0000]) == 230.0


def test_integers_saturate_and_signs_hold() -> None:
    assert Codec("u16").encode(-5) == [0]
    assert Codec("u16").encode(1e9) == [0xFFFF]
    assert Codec("s16", scale=0.1).decode(Codec("s16", scale=0.1).encode(-12.3)) == \
        pytest.approx(-12.3)
    assert Codec("bit").encode(1) == [1] and Codec("bit").decode([0]) == 0.0
