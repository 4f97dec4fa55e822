"""Name → object registries: every choice a config makes by name goes through one.

Losses (:data:`deepafx.losses.LOSSES`), encoders (:data:`deepafx.encoders.ENCODERS`),
gradient estimators (:data:`deepafx.fx.ESTIMATORS`), synth backends and recipes
(:data:`deepafx.recipes.RECIPES`) are :class:`Registry` objects, so an unknown
name is always an error that lists the known ones, and adding a choice is one
decorated definition rather than another ``elif`` branch.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping from names to objects (classes, factories, lazy ``"module:attr"`` strings).

    Args:
        kind: What is registered (``"loss"``, ``"encoder"``, …), used in error messages.

    Entries given as ``"package.module:attribute"`` strings are imported on first
    :meth:`get`, so registering a recipe or backend costs no import.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T | str:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Raises:
            ValueError: ``name`` is already registered.
        """
        if obj is not None:
            self._add(name, obj)
            return obj

        def deco(o: T) -> T:
            self._add(name, o)
            return o

        return deco

    def _add(self, name: str, obj: Any) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """The object registered as ``name`` (lazy entries are imported now).

        Raises:
            ValueError: unknown name (the known ones are listed).
            ImportError: a lazy entry whose module cannot be imported.
        """
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self._items) or '(none)'}")
        obj = self._items[name]
        if isinstance(obj, str) and ":" in obj:
            module, attr = obj.split(":", 1)
            obj = getattr(importlib.import_module(module), attr)
            self._items[name] = obj
        return obj

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
