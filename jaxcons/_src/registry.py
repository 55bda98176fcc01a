"""Name registries behind ``constraints.get/serialize/deserialize/register`` and their twins."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from jaxcons._src.base import Constraint, Regularizer, json_safe

# Where objects of each kind go, for messages about an object given to the other kind.
_WHERE = {
    "constraint": "constrain, jaxcons.apply_constraints, jaxcons.chain(constraints=...)",
    "regularizer": "penalty, jaxcons.regularize, jaxcons.proximal, jaxcons.chain(regularizers=...)",
}


class Registry:
    """Maps names to classes (and shortcut names to factories) for one kind of object.

    Args:
      kind: ``"constraint"`` or ``"regularizer"``, used in messages.
      base: the base class registered classes must subclass.
    """

    def __init__(self, kind: str, base: type):
        self.kind = kind
        self.base = base
        self._classes: dict[str, type] = {}
        self._shortcuts: dict[str, Callable[[], Any]] = {}
        # The registry of the other kind, for messages that say where an object belongs.
        self.counterpart: Registry | None = None

    def add(self, cls: type, *, name: str | None = None) -> type:
        """Registers ``cls`` under ``name`` (default: its class name)."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(
                f"Only subclasses of {self.base.__name__} can be registered as a {self.kind}; "
                f"got {cls!r}."
            )
        name = cls.__name__ if name is None else name
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"A registered {self.kind} name must be a non-empty str, got {name!r}."
            )
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"A {self.kind} named {name!r} is already registered ({existing!r}); "
                f"pass a different name=."
            )
        if name in self._shortcuts:
            raise ValueError(f"{name!r} is a built-in {self.kind} shortcut name; pick another.")
        self._classes[name] = cls
        cls._jaxcons_registered_name = name  # type: ignore[attr-defined]
        return cls

    def add_shortcut(self, name: str, factory: Callable[[], Any]) -> None:
        """Registers a string identifier that builds an object with ``factory()``."""
        self._shortcuts[name] = factory

    def add_builtins(self, classes: Iterable[type]) -> None:
        """Registers built-in classes: each under its name, and its ``identifiers`` (the
        snake_case name, then legacy names) as shortcuts that build ``cls.from_identifier()``.
        """
        for cls in classes:
            self.add(cls)
            for name in cls.identifiers:  # type: ignore[attr-defined]
                self.add_shortcut(name, cls.from_identifier)  # type: ignore[attr-defined]

    def register(self, cls: type | None = None, *, name: str | None = None) -> Any:
        """Class decorator registering a custom class, with or without ``name=``."""
        if cls is None:
            return lambda c: self.add(c, name=name)
        return self.add(cls, name=name)

    def names(self) -> list[str]:
        """Every string identifier `get` accepts, sorted."""
        return sorted(set(self._classes) | set(self._shortcuts))

    def knows(self, identifier: Any) -> bool:
        """Whether ``identifier`` is one of this registry's names or a config dict naming one
        of its classes (what `get` turns into an object of this kind)."""
        if isinstance(identifier, dict):
            identifier = identifier.get("class_name")
        return isinstance(identifier, str) and (
            identifier in self._shortcuts or identifier in self._classes
        )

    def _unknown(self, identifier: Any) -> ValueError:
        other = self.counterpart
        if other is not None and identifier in other.names():
            return ValueError(
                f"{identifier!r} names a {other.kind}, not a {self.kind}: it belongs in "
                f"{other.kind} rules. Valid {self.kind} names: {', '.join(self.names())}."
            )
        return ValueError(
            f"Unknown {self.kind} identifier {identifier!r}. Valid names: "
            f"{', '.join(self.names())}; or register a custom class with "
            f"jaxcons.{self.kind}s.register."
        )

    def _build(self, name: str, factory: Callable[[], Any]) -> Any:
        try:
            return factory()
        except TypeError as e:
            raise ValueError(
                f"The {self.kind} identifier {name!r} needs arguments ({e}): build the object "
                f"(or pass a config {{'class_name': ..., 'config': {{...}}}}) instead."
            ) from None

    def get(self, identifier: Any) -> Any:
        """Turns None, a name, a config dict, an object or a callable into an object."""
        if identifier is None:
            return None
        if isinstance(identifier, str):
            if identifier in self._shortcuts:
                return self._build(identifier, self._shortcuts[identifier])
            if identifier in self._classes:
                return self._build(identifier, self._classes[identifier])
            raise self._unknown(identifier)
        if isinstance(identifier, dict):
            return self.deserialize(identifier)
        other = self.counterpart
        if other is not None and isinstance(identifier, other.base):
            raise TypeError(
                f"{identifier!r} is a {other.kind}, not a {self.kind}: it belongs in "
                f"{other.kind} rules (jaxcons.{_WHERE[other.kind]}), not in {self.kind} rules."
            )
        if isinstance(identifier, self.base) or callable(identifier):
            if isinstance(identifier, type):
                raise TypeError(
                    f"Expected a {self.kind} instance, got the class {identifier.__name__}; "
                    f"call it first: {identifier.__name__}()."
                )
            return identifier
        raise TypeError(
            f"Could not interpret {self.kind} identifier {identifier!r} of type "
            f"{type(identifier).__name__}: expected None, a name, a config dict, a "
            f"{self.base.__name__} or a callable."
        )

    def serialize(self, obj: Any) -> dict[str, Any]:
        """Returns a JSON-safe ``{"class_name": ..., "config": ...}`` dict for ``obj``."""
        if not isinstance(obj, self.base):
            raise ValueError(
                f"Cannot serialize {obj!r}: only {self.base.__name__} subclasses can be "
                f"serialized (a plain function has no config); subclass {self.base.__name__} "
                f"and register it with jaxcons.{self.kind}s.register."
            )
        if getattr(obj, "is_scheduled", False):
            raise ValueError(
                f"Cannot serialize {obj!r}: a hyper-parameter is a schedule, which is code, not "
                "data. Serialize the constraint with fixed values and rebuild the schedule in "
                "code."
            )
        name = type(obj).__dict__.get("_jaxcons_registered_name")
        if name is None or self._classes.get(name) is not type(obj):
            raise ValueError(
                f"Cannot serialize {obj!r}: {type(obj).__name__} is not registered; decorate "
                f"it with @jaxcons.{self.kind}s.register."
            )
        config = json_safe(obj.get_config())
        try:
            json.dumps(config)
        except TypeError as e:
            raise ValueError(
                f"Cannot serialize {obj!r}: get_config() returned {config!r}, which is not "
                f"JSON-safe ({e})."
            ) from None
        return {"class_name": name, "config": config}

    def deserialize(self, config: Any) -> Any:
        """Rebuilds an object from the output of `serialize` (or from a name)."""
        if isinstance(config, str):
            return self.get(config)
        if not (isinstance(config, dict) and "class_name" in config):
            raise ValueError(
                f"A serialized {self.kind} must be a dict with 'class_name' and 'config' keys, "
                f"got {config!r}."
            )
        name = config["class_name"]
        cls = self._classes.get(name)
        if cls is None:
            raise self._unknown(name)
        kwargs = config.get("config") or {}
        if not isinstance(kwargs, dict):
            raise ValueError(
                f"The 'config' of a serialized {self.kind} must be a dict, got {kwargs!r}."
            )
        return cls.from_config(dict(kwargs))


CONSTRAINTS = Registry("constraint", Constraint)
"""The constraint registry: `jaxcons.constraints` registers its classes here."""


REGULARIZERS = Registry("regularizer", Regularizer)
"""The regularizer registry: `jaxcons.regularizers` registers its classes here."""


CONSTRAINTS.counterpart = REGULARIZERS
REGULARIZERS.counterpart = CONSTRAINTS
