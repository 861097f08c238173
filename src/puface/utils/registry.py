"""A name -> factory registry, in the style of timm's `create_model`, with one way to report bad options.

Example::

    ATTACKS = Registry("attack")

    @ATTACKS.register("fawkes", summary="...")
    class Fawkes: ...

    ATTACKS.create("fawkes", mode="high")      # unknown names and options raise ConfigError
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import ConfigError, PufaceError


@dataclass
class RegistryEntry:
    name: str
    factory: Callable[..., Any]
    info: dict[str, Any] = field(default_factory=dict)

    def signature(self) -> inspect.Signature | None:
        """The factory's call signature (a class: its __init__ without self); None if unknown."""
        try:
            return inspect.signature(self.factory)
        except (TypeError, ValueError):
            return None

    def accepted(self, positional: int = 0) -> list[str]:
        """The factory's named parameters after the first `positional` ones (for error messages)."""
        sig = self.signature()
        if sig is None:
            return []
        named = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return [p.name for p in named[positional:]]


def _expects_number(param: inspect.Parameter) -> bool:
    """True when a parameter takes a number only: its default is an int or float (not a bool), or its annotation
    names nothing but int, float and None."""
    if isinstance(param.default, (int, float)) and not isinstance(param.default, bool):
        return True
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return False
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    kinds = {t.strip() for t in str(text).replace("Optional[", "").replace("]", "").split("|")}
    return bool(kinds) and kinds <= {"int", "float", "None"} and bool(kinds & {"int", "float"})


def require_numbers(settings: Any, what: str) -> None:
    """Raise `ConfigError` when a field of the dataclass `settings` that takes a number (`_expects_number`: an int
    or float default, or an int/float annotation) holds text, e.g. `steps=abc` from a spec; `what` names the attack."""
    import dataclasses

    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if not isinstance(value, str):
            continue
        default = f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty
        param = inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type)
        if _expects_number(param):
            raise ConfigError(f"{what}: {f.name} must be a number, got {value!r}")


def typed_settings(settings: Any, what: str) -> Any:
    """The dataclass `settings` (an attack's knobs) with every value in its field's type, so that two specs that mean
    the same thing give the same config, and so the same cache key: an int where a float goes becomes a float
    (`epsilon=8` -> 8.0, as the default 8.0), a whole float where an int goes an int (`steps=20.0` -> 20), 0 or 1
    where a bool goes false or true. Text where a number goes (`require_numbers`), a fraction where an integer goes
    and anything but true / false / 0 / 1 where a bool goes (`random_start=no`) raise `ConfigError` naming the
    option; `what` names the attack."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(settings))
    require_numbers(settings, what)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value, kind = getattr(settings, f.name), hints.get(f.name)
        if kind is bool:
            if not isinstance(value, bool):
                if not (isinstance(value, (int, float)) and value in (0, 1)):
                    raise ConfigError(f"{what}: {f.name} must be true or false, got {value!r}")
                changes[f.name] = bool(value)
        elif kind in (int, float) and isinstance(value, bool):
            raise ConfigError(f"{what}: {f.name} must be a number, got {value!r}")
        elif kind is float and isinstance(value, int):
            changes[f.name] = float(value)
        elif kind is int and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{what}: {f.name} must be an integer, got {value!r}")
            changes[f.name] = int(value)
    return dataclasses.replace(settings, **changes) if changes else settings


def _defined_at(factory: Callable[..., Any]) -> str:
    """Where a factory is defined: its module and qualified name."""
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


class Registry:
    """Maps names to factories. `info` holds free-form metadata shown by `puface ... list`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, RegistryEntry] = {}

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            old = self._entries.get(name)
            # the same definition run again (a notebook cell or a script re-run in one session) replaces its entry;
            # another one under a taken name is refused
            if old is not None and _defined_at(old.factory) != _defined_at(factory):
                raise ValueError(f"{self.kind} {name!r} registered twice: by {_defined_at(old.factory)} and by "
                                 f"{_defined_at(factory)}; give the new one another name")
            self._entries[name] = RegistryEntry(name, factory, dict(info))
            return factory

        return deco

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """`factory(*args, **kwargs)`; options the factory does not take raise `ConfigError` naming the
        accepted ones (checked against its signature before the call)."""
        return self.check(name, *args, **kwargs).factory(*args, **kwargs)

    def check(self, name: str, *args: Any, **kwargs: Any) -> RegistryEntry:
        """The entry of `name` once `factory(*args, **kwargs)` is known to bind, without calling it: an
        unknown name is a `PufaceError`, an option the factory does not take a `ConfigError` naming the
        accepted ones, text where a number goes or anything but true / false / 0 / 1 where a bool goes (an option
        whose default is a bool: `e2e:flip=no` is not taken as true) a `ConfigError` naming the option. For checking
        a config before any work (other values are only checked by `create`)."""
        entry = self.get(name)
        sig = entry.signature()
        if sig is not None:
            try:
                sig.bind(*args, **kwargs)
            except TypeError as e:
                accepted = ", ".join(entry.accepted(len(args))) or "(none)"
                raise ConfigError(f"{self.kind} {name!r}: {e}; accepted parameters: {accepted}") from None
            for key, value in kwargs.items():
                param = sig.parameters.get(key)
                if param is not None and isinstance(value, str) and _expects_number(param):
                    raise ConfigError(f"{self.kind} {name!r}: {key} must be a number, got {value!r}")
                if param is not None and isinstance(param.default, bool) and not isinstance(value, bool) \
                        and not (isinstance(value, (int, float)) and value in (0, 1)):
                    raise ConfigError(f"{self.kind} {name!r}: {key} must be true or false, got {value!r}")
        return entry

    def get(self, name: str) -> RegistryEntry:
        try:
            return self._entries[name]
        except KeyError:
            choices = ", ".join(sorted(self._entries)) or "(none)"
            raise PufaceError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[RegistryEntry]:
        return iter(self._entries[n] for n in self.names())
