"""The one spec grammar for attacks, defenses and trainers (CLI options and TOML configs).

A spec is either a string or a table (a dict, TOML's form). The string form::

    name[:key=value[,key=value...]]          e.g.  jpeg:quality=50   fawkes:mode=high,steps=40
    value a|b|c                              a list: lowkey:embedders=dlib-resnet29|sface
    spec+spec                                a composition (defenses only): blur:sigma=1+bitdepth:bits=5

Values are read as int, then float, then true/false, else kept as text. The table form is
``{name = "...", key = value, ...}`` (an optional ``label`` names the entry in result tables).
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

__all__ = ["parse_value", "parse_spec", "split_composition", "as_table"]


def parse_value(text: str) -> Any:
    """int, float, bool or the stripped text itself; ``a|b`` gives a list of such values."""
    t = text.strip()
    if "|" in t:
        return [parse_value(x) for x in t.split("|") if x.strip()]
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    return t


def parse_spec(text: str, what: str = "spec") -> dict[str, Any]:
    """``name[:key=value,...]`` -> {"name": name, key: value, ...}. `what` names the kind in errors."""
    name, _, args = str(text).strip().partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"{what} {text!r}: empty name")
    table: dict[str, Any] = {"name": name}
    if args:
        for kv in args.split(","):
            k, eq, v = kv.partition("=")
            if not eq or not k.strip():
                raise ConfigError(f"{what} {text!r}: expected key=value, got {kv!r}")
            table[k.strip()] = parse_value(v)
    return table


def split_composition(text: str, what: str = "spec") -> list[str]:
    """The steps of ``a+b+c`` (one step when there is no ``+``); an empty step is an error."""
    parts = [p.strip() for p in str(text).split("+")]
    if not all(parts):
        raise ConfigError(f"{what} {text!r}: empty step")
    return parts


def as_table(spec: str | dict, what: str = "spec") -> dict[str, Any]:
    """A spec as a table: strings are parsed, tables copied; the table must have a name."""
    if isinstance(spec, str):
        return parse_spec(spec, what)
    if isinstance(spec, dict):
        if "name" not in spec:
            raise ConfigError(f"{what} {spec!r} has no 'name'")
        return dict(spec)
    raise ConfigError(f"{what}: expected a spec string or a table, got {spec!r}")
