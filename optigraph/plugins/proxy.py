"""`proxy`: the run's every upstream call goes through the proxy's providers (backends/proxy.py).

The proxy is a backend, not a stage: which backend a run uses is decided when the run starts, from
its expression, so every call of every approach and plugin in it (not only a passthrough) is
balanced, limited, retried and failed over, and a resumed run goes the same way. On a server whose
only upstream is the proxy (`--proxy-config` without `--base-url`) every run goes through it anyway;
naming the plugin matters where the server also has a base URL. `pre` only notes the providers and
their health in the run; each call's provider is recorded with the call (backend `proxy:<name>`).
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import PluginState


class ProxyParams(ApproachParams):
    """The providers and their policy are the operator's (--proxy-config); a request sets nothing."""


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    backend = runtime.context.llm.backend
    report = getattr(backend, "report", None)
    if report is None:
        return {"notes": [f"proxy: the run's backend is {backend.name!r}, not the proxy"]}
    providers = ", ".join(
        f"{name.removeprefix('proxy:')} (weight {p['weight']}, {'healthy' if p['healthy'] else 'down'})"
        for name, p in report().items()
    )
    return {"notes": [f"proxy: providers {providers}"]}


SPEC = PluginSpec(
    name="proxy",
    description="Sends every upstream call of the run through the configured providers: weighted round-robin, "
    "concurrency limits, health, retries with backoff and failover.",
    pre=pre,
    params=ProxyParams,
    needs=frozenset({"proxy"}),
)
