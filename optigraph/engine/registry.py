"""Approaches and plugins by name: each declares its graph (or stages), parameters, needs and cost.

Approaches and plugins share one namespace, since both are named in the same expressions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from optigraph.core.spec import ApproachSpec, PluginSpec, Spec
from optigraph.errors import UnknownApproach
from optigraph.graphs import BUILTIN_APPROACHES
from optigraph.plugins import BUILTIN_PLUGIN_APPROACHES, BUILTIN_PLUGINS


@dataclass
class Registry:
    """The approaches and plugins a server knows. Built once at start and passed in; not a module global."""

    specs: dict[str, Spec] = field(default_factory=dict)

    def add(self, spec: Spec) -> None:
        if spec.name in self.specs:
            raise ValueError(f"{self.specs[spec.name].kind} {spec.name!r} is already registered")
        self.specs[spec.name] = spec

    def get(self, name: str) -> Spec:
        spec = self.specs.get(name)
        if spec is None:
            raise UnknownApproach(f"unknown approach {name!r}; known: {', '.join(sorted(self.specs))}", param="model")
        return spec

    def approach(self, name: str) -> ApproachSpec:
        spec = self.get(name)
        if not isinstance(spec, ApproachSpec):
            raise UnknownApproach(f"{name!r} is a plugin, not an approach", param="model")
        return spec

    def plugin(self, name: str) -> PluginSpec:
        spec = self.get(name)
        if not isinstance(spec, PluginSpec):
            raise UnknownApproach(f"{name!r} is an approach, not a plugin", param="model")
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def names(self) -> Iterable[str]:
        return self.specs.keys()

    def plugin_names(self) -> frozenset[str]:
        return frozenset(name for name, spec in self.specs.items() if isinstance(spec, PluginSpec))

    def approaches(self) -> list[ApproachSpec]:
        return [s for s in self.specs.values() if isinstance(s, ApproachSpec)]

    def plugins(self) -> list[PluginSpec]:
        return [s for s in self.specs.values() if isinstance(s, PluginSpec)]


def builtin_registry() -> Registry:
    """A registry holding every approach and plugin shipped with optigraph."""
    registry = Registry()
    for spec in (*BUILTIN_APPROACHES, *BUILTIN_PLUGIN_APPROACHES, *BUILTIN_PLUGINS):
        registry.add(spec)
    return registry
