"""Plugins: pre- and post-stages around whatever they wrap in an expression (core/spec.py PluginSpec).

Each module exposes `SPEC`, a PluginSpec; the engine wraps them around approaches (engine/wrapping.py).
"""

from optigraph.plugins import (
    compact,
    context_memory,
    executecode,
    json_output,
    mcp_tools,
    privacy,
    readurls,
    router,
    spl,
)

BUILTIN_PLUGINS = (
    privacy.SPEC,
    readurls.SPEC,
    context_memory.SPEC,
    json_output.SPEC,
    executecode.SPEC,
    mcp_tools.SPEC,
    spl.SPEC,
    router.SPEC,
    router.AUTO_SPEC,
    compact.SPEC,
)
