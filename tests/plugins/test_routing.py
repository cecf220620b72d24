"""A plugin that chooses at run time which expression runs inside it; the choice is recorded."""

from __future__ import annotations

from typing import Any

import pytest
from engine_stack import ask, ask_streamed, make_runner, streamed_text
from scripted import ScriptedBackend

from optigraph.core.spec import PluginSpec
from optigraph.engine.registry import builtin_registry
from optigraph.errors import InvalidRequest


def router(routes: dict[str, str]) -> PluginSpec:
    async def pre(state: dict[str, Any], runtime: Any) -> dict[str, Any]:
        text = state["messages"][-1]["content"]
        for word, expression in routes.items():
            if word in text:
                return {"route": expression, "reason": f"the request mentions {word!r}"}
        return {}

    return PluginSpec(name="pick", description="routes by keyword", pre=pre, routes=True)


def runner_with(routes: dict[str, str], backend: ScriptedBackend):
    registry = builtin_registry()
    registry.add(router(routes))
    return make_runner(backend, registry=registry)


async def test_the_routed_expression_runs() -> None:
    backend = ScriptedBackend(lambda body: "x")
    runner = runner_with({"math": "re2", "two": "none|re2"}, backend)
    prep = await runner.prepare(
        {"model": "pick&none-m", "messages": [{"role": "user", "content": "a math question"}]}, client_key=None
    )
    result = await runner.complete(prep)
    assert "Read the question again" in backend.calls[0]["messages"][-1]["content"]  # re2 ran, not none
    assert result.response["choices"][0]["message"]["content"] == "x"
    assert len(backend.calls) == 1


async def test_choice_counts_known_only_at_run_time_are_answered() -> None:
    backend = ScriptedBackend(lambda body: "same")
    runner = runner_with({"two": "none|re2"}, backend)
    response = await ask(runner, {"model": "pick&none-m", "messages": [{"role": "user", "content": "give two"}]})
    assert len(response["choices"]) == 2  # the static shape said 1
    chunks = await ask_streamed(runner, {"model": "pick&none-m", "messages": [{"role": "user", "content": "give two"}]})
    assert streamed_text(chunks, 0) == "same" and streamed_text(chunks, 1) == "same"
    assert sorted({c["index"] for ch in chunks for c in ch["choices"] if c.get("finish_reason")}) == [0, 1]


async def test_without_a_route_the_wrapped_expression_runs() -> None:
    backend = ScriptedBackend(lambda body: "plain")
    runner = runner_with({"math": "re2"}, backend)
    await ask(runner, {"model": "pick&none-m", "messages": [{"role": "user", "content": "hello"}]})
    assert backend.calls[0]["messages"][-1]["content"] == "hello"


async def test_a_route_to_an_unknown_approach_is_a_clear_error() -> None:
    runner = runner_with({"x": "nosuch"}, ScriptedBackend())
    with pytest.raises(InvalidRequest, match="routed to an invalid expression"):
        await ask(runner, {"model": "pick&none-m", "messages": [{"role": "user", "content": "x"}]})


async def test_a_plugin_that_does_not_declare_routes_cannot_route() -> None:
    async def pre(state: dict[str, Any], runtime: Any) -> dict[str, Any]:
        return {"route": "re2"}

    from optigraph.errors import OptigraphError

    registry = builtin_registry()
    registry.add(PluginSpec(name="sneaky", description="", pre=pre))
    with pytest.raises(OptigraphError, match="without declaring routes=True"):
        await ask(
            make_runner(ScriptedBackend(), registry=registry),
            {"model": "sneaky&none-m", "messages": [{"role": "user", "content": "x"}]},
        )
