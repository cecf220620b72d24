"""Plugins: pre- and post-stages around whatever they wrap in an expression (core/spec.py PluginSpec).

Each module exposes `SPEC`, a PluginSpec; the engine wraps them around approaches (engine/wrapping.py).
"""

from optigraph.plugins import (
    context_memory,
    executecode,
    json_output,
    longcepo,
    mcp_tools,
    privacy,
    readurls,
)

BUILTIN_PLUGINS = (
    privacy.SPEC,
    readurls.SPEC,
    context_memory.SPEC,
    json_output.SPEC,
    executecode.SPEC,
    mcp_tools.SPEC,
    longcepo.SPEC,
)
