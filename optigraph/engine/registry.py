"""Approaches by name: each declares its graph, parameters, requirements and cost."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from optigraph.core.spec import ApproachSpec
from optigraph.errors import UnknownApproach
from optigraph.graphs import BUILTIN_APPROACHES


@dataclass
class Registry:
    """The approaches a server knows. Built once at start and passed in; not a module global."""

    specs: dict[str, ApproachSpec] = field(default_factory=dict)

    def add(self, spec: ApproachSpec) -> None:
        if spec.name in self.specs:
            raise ValueError(f"approach {spec.name!r} is already registered")
        self.specs[spec.name] = spec

    def get(self, name: str) -> ApproachSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise UnknownApproach(
                f"unknown approach {name!r}; known: {', '.join(sorted(self.specs))}", param="model"
            )
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def names(self) -> Iterable[str]:
        return self.specs.keys()


def builtin_registry() -> Registry:
    """A registry holding every approach shipped with optigraph."""
    registry = Registry()
    for spec in BUILTIN_APPROACHES:
        registry.add(spec)
    return registry
