"""Plugins: pre- and post-stages around whatever they wrap in an expression (core/spec.py PluginSpec).

Each module exposes `SPEC`, a PluginSpec; the engine wraps them around approaches (engine/wrapping.py).
OptILLM's plugins that answer on their own (deep_research) are approaches (an ApproachSpec with its own
graph), kept here beside the plugins whose code they use (search providers, readurls' fetcher).
"""

from optigraph.plugins import (
    compact,
    context_memory,
    deep_research,
    executecode,
    json_output,
    longcepo,
    mcp_tools,
    privacy,
    proxy,
    readurls,
    router,
    spl,
    web_search,
)

BUILTIN_PLUGINS = (
    privacy.SPEC,
    readurls.SPEC,
    context_memory.SPEC,
    json_output.SPEC,
    executecode.SPEC,
    mcp_tools.SPEC,
    longcepo.SPEC,
    web_search.SPEC,
    proxy.SPEC,
    spl.SPEC,
    router.SPEC,
    router.AUTO_SPEC,
    compact.SPEC,
)

# Approaches built from plugin code (registered with the approaches).
BUILTIN_PLUGIN_APPROACHES = (deep_research.SPEC,)
