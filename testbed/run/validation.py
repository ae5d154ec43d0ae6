"""Cleared versus metered, trade by trade and rig by rig; JUnit XML for CI systems.

A rig's *routed* energy is what it was driven to put on the bus: its cleared trades plus
what it settles with the grid (unsold surplus out, unmet demand in, and an oversell
shortfall that the grid node supplies on the seller's behalf). Per trade, a seller's metered
delivery to the community is its metered export less its routed grid export, shared over
its fills pro rata; the buyer's side likewise. Each must lie within the rig's tolerance of
the routed figure. A rig taken off the bus fails its checks, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from contracts.mechanism import Clearing

ABS_FLOOR_KWH = Fraction(1, 10**6)  # the metered quantisation: nothing is closer than this


@dataclass(frozen=True)
class Check:
    suite: str
    name: str
    passed: bool
    expected: float
    measured: float
    message: str


def _within(measured: Fraction, expected: Fraction, tol: Fraction) -> bool:
    return abs(measured - expected) <= max(abs(expected) * tol, ABS_FLOOR_KWH)


def interval_checks(index: int, clearing: Clearing, routed_kwh: dict[str, Fraction],
                    metered_kwh: dict[str, Fraction], tolerance_pct: float,
                    tripped: dict[str, str]) -> list[Check]:
    tol = Fraction(str(tolerance_pct)) / 100
    suite = f"interval {index}"
    checks: list[Check] = []
    sold = {h: clearing.sold(h) for h in routed_kwh}
    bought = {h: clearing.bought(h) for h in routed_kwh}

    def clip(x: Fraction, hi: Fraction) -> Fraction:
        return min(max(x, Fraction(0)), hi)

    def p2p(h: str, energy: Fraction, side: str) -> tuple[Fraction, Fraction]:
        """(routed, metered) community share of one fill for household ``h``.

        ``grid`` is the routed grid part of the rig's net: + unsold surplus fed in,
        - energy the grid supplies (unmet demand, or an oversell shortfall).
        """
        grid = routed_kwh[h] - (sold[h] - bought[h])
        m = metered_kwh[h]
        if side == "sell":
            routed = clip(sold[h] + min(grid, Fraction(0)), sold[h])
            measured = clip(m + bought[h] - max(grid, Fraction(0)), sold[h])
            total = sold[h]
        else:
            routed = clip(bought[h] - max(grid, Fraction(0)), bought[h])
            measured = clip(-m + sold[h] + min(grid, Fraction(0)), bought[h])
            total = bought[h]
        share = energy / total
        return routed * share, measured * share

    for seq, f in enumerate(clearing.fills):
        for h, side in ((f.seller, "sell"), (f.buyer, "buy")):
            routed, measured = p2p(h, f.energy, side)
            ok = h not in tripped and _within(measured, routed, tol)
            why = f"rig {h} off the bus: {tripped[h]}" if h in tripped else (
                f"metered {float(measured):.6f} kWh vs routed {float(routed):.6f} kWh "
                f"(cleared {float(f.energy):.6f} kWh)")
            checks.append(Check(suite, f"trade {seq} {f.seller}->{f.buyer} {side}er {h}", ok,
                                float(routed), float(measured), why))
    for h in routed_kwh:
        ok = h not in tripped and _within(metered_kwh[h], routed_kwh[h], tol)
        why = f"rig {h} off the bus: {tripped[h]}" if h in tripped else (
            f"metered {float(metered_kwh[h]):+.6f} kWh vs routed {float(routed_kwh[h]):+.6f} kWh")
        checks.append(Check(suite, f"household {h} net energy", ok, float(routed_kwh[h]),
                            float(metered_kwh[h]), why))
    return checks


def write_junit(path: Path, checks: list[Check], name: str) -> None:
    import xml.etree.ElementTree as ET  # only for --junit (a run's start pays no XML parser)

    root = ET.Element("testsuites", name=name, tests=str(len(checks)),
                      failures=str(sum(not c.passed for c in checks)))
    suites: dict[str, ET.Element] = {}
    for c in checks:
        suite = suites.get(c.suite)
        if suite is None:
            suite = suites[c.suite] = ET.SubElement(root, "testsuite", name=c.suite)
        case = ET.SubElement(suite, "testcase", classname=f"{name}.{c.suite}", name=c.name)
        ET.SubElement(ET.SubElement(case, "properties"), "property", name="expected",
                      value=f"{c.expected:.9g}")
        case[0].append(ET.Element("property", name="measured", value=f"{c.measured:.9g}"))
        if not c.passed:
            ET.SubElement(case, "failure", message=c.message).text = c.message
        else:
            ET.SubElement(case, "system-out").text = c.message
    for suite in suites.values():
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    ET.indent(root)
    path.write_text(ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
