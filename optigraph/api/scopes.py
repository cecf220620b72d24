"""The scopes a caller may hold, and what each allows (docs/security.md).

- `chat`: POST /v1/chat/completions with approaches and plugins that need nothing more;
- `plugins:code`: approaches and plugins that run model-written code in the sandbox (needs
  "sandbox": executecode, coc, z3);
- `plugins:web`: plugins that fetch URLs (needs "network": readurls);
- `plugins:mcp`: plugins that call MCP tools (needs "mcp": mcp);
- `runs:read`: list and show its tenant's runs (GET /v1/runs..., the /ui pages);
- `runs:write`: resume, fork and delete its tenant's runs (resume and fork also need the scopes of
  the run's approaches);
- `admin`: every scope above. It does not cross tenants: an admin sees its own tenant's runs only.
"""

from __future__ import annotations

from collections.abc import Iterable

from optigraph.engine.registry import Registry
from optigraph.errors import PermissionDenied

CHAT = "chat"
PLUGINS_CODE = "plugins:code"
PLUGINS_WEB = "plugins:web"
PLUGINS_MCP = "plugins:mcp"
RUNS_READ = "runs:read"
RUNS_WRITE = "runs:write"
ADMIN = "admin"
ALL_SCOPES = (CHAT, PLUGINS_CODE, PLUGINS_WEB, PLUGINS_MCP, RUNS_READ, RUNS_WRITE, ADMIN)
# What a key gets when it is created without --scope: no plugins that reach out or run code.
DEFAULT_KEY_SCOPES = (CHAT, RUNS_READ, RUNS_WRITE)

# The scope an approach or plugin needs, by what it declares it needs (core/spec.py `needs`).
SCOPE_OF_NEED = {"sandbox": PLUGINS_CODE, "network": PLUGINS_WEB, "mcp": PLUGINS_MCP}


def parse_scopes(value: object) -> frozenset[str]:
    """Scopes from a token's `scope` claim (space-separated) or a list (`scp`, a key's)."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(str(v) for v in value)
    return frozenset()


def unknown_scopes(scopes: Iterable[str]) -> list[str]:
    return sorted(set(scopes) - set(ALL_SCOPES))


def allows(held: frozenset[str], scope: str) -> bool:
    return ADMIN in held or scope in held


def require(held: frozenset[str], scope: str, what: str) -> None:
    """A 403 naming the missing scope unless `held` allows `scope`."""
    if not allows(held, scope):
        raise PermissionDenied(f"{what} needs the scope {scope!r}, which this key or token does not have", scope=scope)


def approach_scopes(registry: Registry, names: Iterable[str]) -> dict[str, str]:
    """The scopes the approaches and plugins `names` need, each with the first name that needs it."""
    out: dict[str, str] = {}
    for name in names:
        for need in sorted(registry.get(name).needs):
            scope = SCOPE_OF_NEED.get(need)
            if scope is not None:
                out.setdefault(scope, name)
    return out


def require_approaches(held: frozenset[str], registry: Registry, names: Iterable[str]) -> None:
    """A 403 when an approach or plugin of `names` needs a scope `held` lacks."""
    for scope, name in approach_scopes(registry, names).items():
        kind = registry.get(name).kind
        require(held, scope, f"the {kind} {name!r}")
