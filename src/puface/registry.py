"""A tiny name -> factory registry, in the style of timm's `create_model`.

Example::

    ATTACKS = Registry("attack")

    @ATTACKS.register("fawkes")
    def _fawkes(**kw): ...

    ATTACKS.create("fawkes", mode="high")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import PufaceError


@dataclass
class RegistryEntry:
    name: str
    factory: Callable[..., Any]
    info: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Maps names to factories. `info` holds free-form metadata shown by `puface ... list`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, RegistryEntry] = {}

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = RegistryEntry(name, factory, dict(info))
            return factory

        return deco

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name).factory(**kwargs)

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
