"""A declarative spec's `parameters`: each a typed value with a default and optional bounds, read
and checked here, and turned into the approach's pydantic parameter model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, create_model

from optigraph.core.spec import ApproachParams
from optigraph.engine.authoring.kinds import PARAM_TYPES, type_ok
from optigraph.engine.authoring.reader import Document, Path_

PARAM_KEYS = ("type", "default", "min", "max", "description")


@dataclass
class Param:
    type: str  # a PARAM_TYPES key
    default: Any
    min: Any = None
    max: Any = None
    description: str = ""


def read_parameters(doc: Document, raw: Any) -> dict[str, Param]:
    """The `parameters` mapping (name -> {type, default, min, max, description}); a parameter with an
    error is left out and the error recorded."""
    out: dict[str, Param] = {}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        doc.error(("parameters",), "parameters must be a mapping of name -> {type, default, min, max, description}")
        return out
    for name, body in raw.items():
        param = _read_parameter(doc, ("parameters", name), name, body)
        if param is not None:
            out[name] = param
    return out


def _read_parameter(doc: Document, path: Path_, name: Any, body: Any) -> Param | None:
    """One parameter: an identifier naming a mapping with known keys, a type, a default of that type,
    and bounds the default respects."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        doc.error(path, f"parameter name {name!r} must be an identifier", key=True)
        return None
    if not isinstance(body, dict):
        doc.error(path, f"parameter {name!r} must be a mapping with type and default")
        return None
    for key in body:
        if key not in PARAM_KEYS:
            doc.error(
                path + (key,), f"unknown key {key!r} in parameter {name!r} (allowed: {', '.join(PARAM_KEYS)})", key=True
            )
    type_name = body.get("type")
    if type_name not in PARAM_TYPES:
        doc.error(
            path + ("type",), f"parameter {name!r}: type must be one of {', '.join(PARAM_TYPES)}, got {type_name!r}"
        )
        return None
    if "default" not in body:
        doc.error(path, f"parameter {name!r} needs a default (null for 'unset')")
        return None
    default = body["default"]
    if default is not None and not type_ok(default, type_name):
        doc.error(path + ("default",), f"parameter {name!r}: default {default!r} is not a {type_name}")
        return None
    bounds = _read_bounds(doc, path, name, type_name, body)
    if default is not None and (
        ("min" in bounds and default < bounds["min"]) or ("max" in bounds and default > bounds["max"])
    ):
        doc.error(path + ("default",), f"parameter {name!r}: default {default!r} is outside [min, max]")
    description = body.get("description") or ""
    if not isinstance(description, str):
        doc.error(path + ("description",), f"parameter {name!r}: description must be text")
        description = ""
    return Param(type_name, default, bounds.get("min"), bounds.get("max"), description)


def _read_bounds(doc: Document, path: Path_, name: str, type_name: str, body: dict[str, Any]) -> dict[str, Any]:
    """`min` and `max`, given: numbers, and only for an int or float parameter."""
    bounds = {}
    for bound in ("min", "max"):
        value = body.get(bound)
        if value is None:
            continue
        if type_name not in ("int", "float") or not type_ok(value, "float"):
            doc.error(path + (bound,), f"parameter {name!r}: {bound} must be a number, for an int or float parameter")
            continue
        bounds[bound] = value
    return bounds


def params_model(name: str, params: dict[str, Param]) -> type[ApproachParams]:
    """The approach's parameter model (`my_bon` -> `MyBonParams`), bounds and descriptions kept."""
    fields: dict[str, Any] = {}
    for pname, p in params.items():
        annotation: Any = PARAM_TYPES[p.type]
        if p.default is None:
            annotation = annotation | None
        fields[pname] = (annotation, Field(p.default, ge=p.min, le=p.max, description=p.description or None))
    model_name = "".join(part.capitalize() for part in name.split("_")) + "Params"
    return create_model(model_name, __base__=ApproachParams, **fields)
