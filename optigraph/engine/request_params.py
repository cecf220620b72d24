"""Where a run's approach parameters come from, lowest precedence first:

1. the server's defaults (`Settings.approach_params`: `--approach-params`, or OptILLM's server flags
   such as `--mcts-simulations`, optigraph/optillm_compat.py);
2. top-level body fields that OptILLM reads (`mcts_simulations`, `k`, `num_candidates`...), each
   for the one approach it belongs to (`OPTILLM_FIELDS`, and the `mcts_`, `rstar_`, `cepo_` prefixes);
3. `optillm_params` (the primary, typed form: `{"mcts": {"simulations": 4}}`).

Every source is validated against the approach's parameter model; a bad body field is a 400 that
names the field. A body field for an approach that is not in the expression is ignored, as OptILLM
ignores what the approach it runs does not read: a client can keep sending the same fields while it
switches approaches. OptILLM's fields are meant for the proxy and never go upstream, except `k`,
which the local decoding strategies also read from the body (it goes upstream unless
majority_voting takes it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from optigraph.core.spec import validate_params
from optigraph.engine.registry import Registry
from optigraph.errors import InvalidRequest

# Body field -> (approach, parameter), for the fields OptILLM's approaches and plugins read.
OPTILLM_FIELDS: dict[str, tuple[str, str]] = {
    "best_of_n": ("bon", "n"),
    "k": ("majority_voting", "k"),
    "num_candidates": ("genselect", "num_candidates"),
    "comparison_temperature": ("genselect", "comparison_temperature"),
    "return_full_response": ("cot_reflection", "return_full_response"),
    "deepthink_samples": ("deepthink", "deepthink_samples"),
    "confidence_threshold": ("deepthink", "confidence_threshold"),
    "enable_self_discover": ("deepthink", "enable_self_discover"),
    "reasoning_modules_limit": ("deepthink", "reasoning_modules_limit"),
    "spl_learning": ("spl", "learning"),
}
# `<prefix><parameter>` is that approach's parameter: mcts_simulations, rstar_max_depth, cepo_planning_n.
OPTILLM_PREFIXES: dict[str, str] = {"mcts_": "mcts", "rstar_": "rstar", "cepo_": "cepo"}
# Fields OptILLM reads that no optigraph approach has a use for (genselect's comparison mode, where
# optigraph always compares the candidates in one call, and its reasoning appendix): taken off the
# request, never sent upstream.
OPTILLM_UNUSED = frozenset({"comparison_mode", "include_reasoning"})
# Fields that may also mean something upstream (the local decoding strategies read `k`).
SHARED_FIELDS = frozenset({"k"})


# A body key can be an OptILLM field only if it is one of these or starts with a prefix: one C-level test
# per key keeps the common body (model, messages, max_tokens...) off the slower per-key lookups.
_PREFIX_TUPLE = tuple(OPTILLM_PREFIXES)


def optillm_keys(body: Mapping[str, Any]) -> list[str]:
    """The keys of `body` that may be OptILLM fields (a superset: `field_target` decides)."""
    return [k for k in body if k in OPTILLM_FIELDS or k in OPTILLM_UNUSED or k.startswith(_PREFIX_TUPLE)]


def field_target(name: str) -> tuple[str, str] | None:
    """The (approach, parameter) an OptILLM body field sets, or None when it is not one."""
    if name in OPTILLM_FIELDS:
        return OPTILLM_FIELDS[name]
    for prefix, approach in OPTILLM_PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return approach, name[len(prefix) :]
    return None


def proxy_fields(body: Mapping[str, Any], names: Iterable[str]) -> frozenset[str]:
    """The body's OptILLM fields that must not go upstream with an expression using `names`."""
    used = set(names)
    out = set()
    for key in optillm_keys(body):
        target = field_target(key)
        if key in OPTILLM_UNUSED or (target is not None and (key not in SHARED_FIELDS or target[0] in used)):
            out.add(key)
    return frozenset(out)


def body_params(body: Mapping[str, Any], registry: Registry, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The OptILLM body fields for the approaches in `names`, by approach, each checked (a 400 naming the field)."""
    used = set(names)
    out: dict[str, dict[str, Any]] = {}
    for key in optillm_keys(body):
        value = body[key]
        target = field_target(key)
        if target is None or target[0] not in used:
            continue
        approach, param = target
        spec = registry.get(approach)
        if param not in spec.params.model_fields:
            raise InvalidRequest(
                f"{key!r} is not a parameter of {approach!r} (its parameters: {', '.join(spec.params.model_fields)})",
                param=key,
                code="invalid_approach_parameter",
            )
        try:
            spec.params.model_validate({param: value})
        except ValidationError as exc:
            raise InvalidRequest(
                f"invalid value for {key!r} ({approach}.{param}): {exc.errors()[0].get('msg')}",
                param=key,
                code="invalid_approach_parameter",
            ) from None
        out.setdefault(approach, {})[param] = value
    return out


def resolve_params(
    registry: Registry,
    names: tuple[str, ...],
    *,
    requested: Mapping[str, Mapping[str, Any]],
    body: Mapping[str, Any],
    defaults: Mapping[str, Mapping[str, Any]],
    memo: dict[str, tuple[Any, dict[str, Any]]] | None = None,
    optillm: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each approach's validated parameters: server defaults < body fields < `requested` (optillm_params).

    An approach whose parameters are open (an OptILLM plugin file reads whatever fields it likes from
    its request_config) also gets every OptILLM field of the body, which otherwise would not reach it.
    `memo` (the caller's, kept across requests) remembers an approach's parameters when nothing was
    given for it and the server has no defaults for it: most requests, validated once (per spec: an
    approach registered again under its name is validated anew). `optillm`: `optillm_keys(body)`,
    when the caller has it already."""
    if optillm_keys(body) if optillm is None else optillm:
        fields = body_params(body, registry, names)
        loose = {key: body[key] for key in proxy_fields(body, names)}
    else:  # most bodies: no OptILLM field to look at
        fields, loose = {}, {}
    out = {}
    for name in names:
        spec = registry.get(name)
        given = loose if spec.params.model_config.get("extra") == "allow" else {}
        raw = {**defaults.get(name, {}), **given, **fields.get(name, {}), **(requested.get(name) or {})}
        if raw or memo is None:
            out[name] = spec.validate_params(raw)
            continue
        seen = memo.get(name)
        if seen is not None and seen[0] is spec:
            out[name] = dict(seen[1])
            continue
        known = spec.validate_params(raw)
        if all(isinstance(v, _IMMUTABLE) for v in known.values()):  # values shared by runs must not be mutable
            memo[name] = (spec, dict(known))
        out[name] = known
    return out


_IMMUTABLE = (str, int, float, bool, type(None), tuple, frozenset)


def check_defaults(defaults: Mapping[str, Mapping[str, Any]], registry: Registry) -> None:
    """Refuses server defaults for unknown approaches or with bad values (checked at start)."""
    for name, params in defaults.items():
        if name not in registry:
            raise InvalidRequest(f"{name!r} is not an approach or plugin of this server", param="approach_params")
        if not isinstance(params, Mapping):
            raise InvalidRequest(f"the parameters of {name!r} must be an object", param="approach_params")
        validate_params(registry.get(name).params, name, dict(params))
