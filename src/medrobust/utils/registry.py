"""Name -> entry registries filled by a decorator, in the manner of timm's ``@register_model``.

Every family (attacks, training methods, backbones, heads, data sources, natural shifts) keeps its
members in one :class:`Registry`. An entry may carry a default config (timm's ``pretrained_cfg``),
so facts about a member live with the member and nowhere else; params.yaml's validation and JSON
Schema read the allowed names from the registries.

Example:
    >>> SHIFTS = Registry("natural shift")
    >>> @SHIFTS.register("gamma", modalities=("CT",))
    ... def gamma(images, severity, generator): ...
    >>> SHIFTS["gamma"] is gamma, SHIFTS.cfg("gamma")
    (True, {'modalities': ('CT',)})
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping of names to entries; :meth:`register` adds one.

    Args:
        kind: what the entries are (``"attack"``, ``"training method"``...), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._cfgs: dict[str, dict[str, Any]] = {}

    def register(self, name: str | None = None, **cfg: Any) -> Callable[[T], T]:
        """A decorator that registers its target under ``name`` with the default config ``cfg``.

        Args:
            name: the registry key; ``None`` takes the target's own ``name`` attribute (a class that
                names itself, as every attack does).
            **cfg: the entry's default config (see :meth:`cfg`).

        Returns:
            The decorator; it registers its target and returns it unchanged.

        Raises:
            ValueError: (when the decorator is applied) ``name`` is taken, or ``None`` for a target without
                a ``name``.
        """

        def add(entry: T) -> T:
            key = name if name is not None else getattr(entry, "name", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.kind}: {entry!r} has no name to register under")
            self.add(key, entry, **cfg)
            return entry

        return add

    def add(self, name: str, entry: T, **cfg: Any) -> None:
        """Register ``entry`` under ``name`` (the decorator's non-decorator form).

        Args:
            name: the registry key.
            entry: the member (a class or a builder function).
            **cfg: the entry's default config (see :meth:`cfg`).

        Raises:
            ValueError: ``name`` is taken.
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        self._cfgs[name] = dict(cfg)

    def remove(self, name: str) -> T:
        """Unregister ``name`` and return its entry (for plugins and tests that register temporarily).

        Args:
            name: the registry key.

        Returns:
            The entry that was registered under ``name``.

        Raises:
            KeyError: an unknown name.
        """
        entry = self[name]
        del self._entries[name], self._cfgs[name]
        return entry

    def cfg(self, name: str) -> dict[str, Any]:
        """The default config ``name`` was registered with.

        Args:
            name: the registry key.

        Returns:
            A copy of the keyword arguments given at registration (empty when there were none).

        Raises:
            KeyError: an unknown name, listing the registered ones.
        """
        self[name]
        return dict(self._cfgs[name])

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries))}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
