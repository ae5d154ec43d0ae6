"""Rig files (TOML): households and their devices, each naming its driver and limits.

A ``[defaults.ROLE]`` table applies to every household unless the household overrides a
key in its own ``[households.ROLE]`` table. Keys that are limits become :class:`Limits`;
``driver``, ``resource``, ``model`` and ``dut`` say how to reach the device; the rest are
the device parameters its role declares (``ROLE_PARAMS``: a battery's capacity and
efficiencies, a link's baud rate). Any other key is an error naming file:line, the table (a
household by its id) and the nearest known key: a typo never silently drops a limit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from drivers.roles import ROLES
from drivers.spec import DeviceSpec, HouseholdSpec, Limits, RigSpec
from testbed.config.tomlfile import Table, load_table, nearest, resolve
from testbed.errors import InputError

# Device parameters the drivers and models read, with their bounds: (kind, low, high,
# low_open). Checked when the rig file is read, so a bad value names its key.
PARAM_BOUNDS: dict[str, tuple[type, float, float, bool]] = {
    "capacity_wh": (float, 0, 1e7, True),
    "soc_initial": (float, 0, 1, False),
    "eta_charge": (float, 0, 1, True),
    "eta_discharge": (float, 0, 1, True),
    "self_discharge_per_h": (float, 0, 1, False),
    "temperature_c": (float, -50, 150, False),
    "firmware_energy_gain": (float, 0, 10, True),
    "watchdog_s": (float, 0, 3600, True),
    "timeout_s": (float, 0, 600, True),
    "baud": (int, 300, 4_000_000, False),
    "channel": (int, 0, 255, False),
}
# An instrument model is a built-in's plain name, or a path written as one (./x.toml,
# /lab/x.toml): never a name that walks out of the instrument folder.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# The parameters each role's devices take (beyond limits and access keys): every driver's
# link and watchdog keys, and the battery model's (drivers/mock/plant.py, preflight).
LINK_KEYS = ("watchdog_s", "timeout_s", "baud", "channel")
BATTERY_KEYS = ("capacity_wh", "soc_initial", "eta_charge", "eta_discharge",
                "self_discharge_per_h", "temperature_c", "firmware_energy_gain")
ROLE_PARAMS: dict[str, tuple[str, ...]] = {
    "pv": LINK_KEYS, "load": LINK_KEYS, "meter": LINK_KEYS, "relay": LINK_KEYS,
    "battery": LINK_KEYS + BATTERY_KEYS, "grid": LINK_KEYS,
}

LIMIT_KEYS = ("max_power_w", "max_voltage_v", "max_current_a", "soc_min", "soc_max",
              "max_temperature_c")
ACCESS_KEYS = ("driver", "resource", "model", "dut")


def load_rig(name_or_path: str) -> RigSpec:
    source, text = resolve("rigs", name_or_path)
    return rig_from_table(load_table(source, text))


def rig_from_dict(source: str, data: dict[str, Any]) -> RigSpec:
    """A rig from parsed TOML (no line numbers in its messages)."""
    return rig_from_table(Table(source, "", data))


def rig_from_table(top: Table) -> RigSpec:
    """A rig from its top-level table; InputError naming FILE:LINE, table and key."""
    source = top.source
    defaults = top.table("defaults", {})
    default_roles = {role: defaults.table(role, {}) for role in ROLES}
    defaults.reject_unknown()

    households = []
    seen: set[str] = set()
    for h in top.tables("households"):
        hid = h.text("id")
        if hid in seen:
            raise InputError(h.where("id"), f"duplicate household id {hid!r}")
        seen.add(hid)
        h.rename(f"households id={hid}")
        devices = {}
        for role in ROLES:
            base, own = default_roles[role], h.table(role, {})
            origin = {k: (base.path, base.line(k)) for k in base.data}
            origin |= {k: (own.path, own.line(k)) for k in own.data}
            merged = h.child(role, {**base.data, **own.data}, origin=origin)
            devices[role] = _device(merged, f"household {hid} {role}", role)
        h.reject_unknown()
        households.append(HouseholdSpec(hid, devices))
    if not households:
        raise InputError(top.where("households"), "a rig needs at least one household")

    rig = RigSpec(
        name=top.text("name"),
        description=top.text("description", ""),
        households=tuple(households),
        grid=_device(top.table("grid"), "grid", "grid"),
        time_scale=top.number("time_scale", positive=True, low=1e-3, high=1e6),
        power_scale=top.number("power_scale", positive=True, high=1e6),
        control_period_s=top.number("control_period_s", 1.0, positive=True, low=1e-3,
                                    high=3600),
        bus_voltage_v=top.number("bus_voltage_v", 48.0, positive=True, high=1500),
        tolerance_pct=top.number("tolerance_pct", 0.5, positive=True, high=100),
        dut_tolerance_pct=top.number("dut_tolerance_pct", 1.0, positive=True, high=100),
        source=source,
    )
    top.reject_unknown()
    return rig


# Roles served by two instruments (driver "split", implied): the part keys in the role's
# table and the instrument role each part plays. A battery: ``bms = { driver, model,
# resource }`` and ``converter = { ... }``; the grid node: ``supply`` (a one-direction
# supply sourcing into the bus) and ``load`` (an electronic load sinking from it). Each
# part takes the link keys.
SPLIT_PARTS: dict[str, dict[str, str]] = {
    "battery": {"bms": "bms", "converter": "converter"},
    "grid": {"supply": "grid_source", "load": "grid_sink"},
}
PART_KEYS = ("driver", "resource", "model", *LINK_KEYS)


def _parts(t: Table, name: str, role: str) -> dict[str, DeviceSpec]:
    keys = SPLIT_PARTS.get(role, {})
    if not any(t.has(k) for k in keys):
        return {}
    parts = {}
    for key, part_role in keys.items():
        sub = t.table(key)
        sub.rename(f"{t.origin.get(key, (t.path, None))[0]}.{key}")
        part = DeviceSpec(name=f"{name} {key}", role=part_role, driver=sub.text("driver"),
                          limits=Limits(), resource=sub.text("resource", None),
                          model=sub.text("model", None),
                          params={k: v for k, v in sub.data.items()
                                  if k in LINK_KEYS})
        for k in LINK_KEYS:
            if k in part.params:
                _param(sub, k, part.params[k])
        if part.driver not in ("scpi", "modbus") or not part.model or not part.resource:
            raise InputError(sub.where("driver"), f"a {role} part is an instrument: driver "
                             "'scpi' or 'modbus', with a model and a resource")
        _access(sub, part)
        sub.reject_unknown(PART_KEYS)
        parts[key] = part
    return parts


def _access(t: Table, spec: DeviceSpec) -> None:
    """The resource parses and the model exists (InputError at the key)."""
    if spec.resource is not None:
        from drivers.resources import parse_resource

        try:
            parse_resource(spec.resource)
        except ValueError as err:
            raise InputError(t.where("resource"), str(err)) from None
    if spec.model is not None:
        _model(t, spec.model)


def _device(t: Table, name: str, role: str) -> DeviceSpec:
    limits = Limits(**{k: t.number(k, None) for k in LIMIT_KEYS})
    for key in ("soc_min", "soc_max"):
        value = getattr(limits, key)
        if value is not None and not 0 <= value <= 1:
            raise InputError(t.where(key), f"must lie in [0, 1], got {value}")
    if limits.soc_min is not None and limits.soc_max is not None \
            and limits.soc_min >= limits.soc_max:
        raise InputError(t.where("soc_min"), "must be below soc_max")
    dut = t.raw("dut", False)
    if not isinstance(dut, bool):
        raise InputError(t.where("dut"), f"expected true or false, got {dut!r}")
    parts = _parts(t, name, role)
    part_keys = tuple(SPLIT_PARTS.get(role, ()))
    spec = DeviceSpec(
        name=name,
        role=role,
        driver=t.text("driver", "split" if parts else ...),
        resource=t.text("resource", None),
        model=t.text("model", None),
        limits=limits,
        params={k: v for k, v in t.data.items()
                if k not in LIMIT_KEYS + ACCESS_KEYS + part_keys},
        dut=dut,
        parts=parts,
    )
    _driver(t, spec.driver)
    if (spec.driver == "split") != bool(parts):
        kinds = "; ".join(f"a {r} of two instruments gives its {' and '.join(p)} tables"
                          for r, p in SPLIT_PARTS.items())
        raise InputError(t.where("driver"), f"driver 'split' is a role served by two "
                         f"instruments ({kinds}, and no driver), or neither")
    t.reject_unknown(LIMIT_KEYS + ACCESS_KEYS + ROLE_PARAMS[role] + part_keys)
    for key, value in spec.params.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InputError(t.where(key), f"expected a number or string, got {value!r}")
        if key in PARAM_BOUNDS:
            _param(t, key, value)
    _access(t, spec)
    return spec


def _driver(t: Table, driver: str) -> None:
    """A driver the registry knows (InputError at the key, with the nearest known one)."""
    from drivers.registry import DRIVERS

    if driver not in DRIVERS:
        hint = nearest(driver, DRIVERS)
        raise InputError(t.where("driver"), f"unknown driver {driver!r}"
                         + (f"; did you mean '{hint}'?" if hint else "")
                         + f" (known: {', '.join(sorted(DRIVERS))})")


def _param(t: Table, key: str, value: object) -> None:
    kind, low, high, low_open = PARAM_BOUNDS[key]
    ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if not ok_type or isinstance(value, bool):
        raise InputError(t.where(key), f"expected {'an integer' if kind is int else 'a number'}"
                         f", got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not (low < number if low_open else low <= number) or not number <= high:
        raise InputError(t.where(key), f"must lie in {'(' if low_open else '['}{low:g}, "
                         f"{high:g}], got {value!r}")


def _model(t: Table, model: str) -> None:
    from drivers.instruments.model import available_instruments

    if PLAIN_NAME.fullmatch(model) and ".." not in model:
        if model not in available_instruments():
            raise InputError(t.where("model"), f"no built-in instrument {model!r} (built-in: "
                             f"{', '.join(available_instruments())}; a file of your own is "
                             "written as a path, ./NAME.toml)")
        return
    explicit = model.startswith(("./", "../", "/"))
    if not explicit or not model.endswith(".toml") or not Path(model).is_file():
        raise InputError(t.where("model"), f"{model!r} is neither a built-in instrument's "
                         "plain name nor an instrument file written as a path (./NAME.toml "
                         "or /PATH/NAME.toml) that exists")
