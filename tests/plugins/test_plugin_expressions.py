"""Plugins in expressions: what they wrap, in which order their stages run, and what streams."""

from __future__ import annotations

from typing import Any

import pytest
from engine_stack import ask, ask_streamed, make_runner, streamed_text
from scripted import ScriptedBackend

from optigraph.core.spec import PluginSpec
from optigraph.engine.expression import (
    Approach,
    Parallel,
    Pipeline,
    Plugin,
    choice_count,
    parse,
    to_text,
    with_plugins,
)
from optigraph.engine.registry import builtin_registry

PLUGINS = frozenset({"p", "q"})


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("p&q&moa", "none", Plugin("p", Plugin("q", Approach("moa")))),
        ("p", "bon", Plugin("p", Approach("bon"))),
        ("moa&p", "bon", Pipeline((Approach("moa"), Plugin("p", Approach("bon"))))),
        ("p&(moa|bon)", "none", Plugin("p", Parallel((Approach("moa"), Approach("bon"))))),
        ("p&moa|q", "re2", Parallel((Plugin("p", Approach("moa")), Plugin("q", Approach("re2"))))),
        ("p&moa&bon", "none", Plugin("p", Pipeline((Approach("moa"), Approach("bon"))))),
        ("p", "q&bon", Plugin("p", Plugin("q", Approach("bon")))),
        ("p", "q", Plugin("p", Plugin("q", Approach("none")))),
    ],
)
def test_a_plugin_wraps_the_rest_of_its_pipeline_or_the_default(text: str, default: str, expected: Any) -> None:
    wrapped = with_plugins(parse(text), PLUGINS, parse(default))
    assert wrapped == expected
    assert with_plugins(parse(to_text(wrapped)), PLUGINS, parse("none")) == wrapped  # the text is what ran
    assert choice_count(wrapped) == choice_count(expected)


def recorder_plugin(name: str, log: list[str]) -> PluginSpec:
    async def pre(state: dict[str, Any], runtime: Any) -> dict[str, Any]:
        log.append(f"{name}.pre")
        messages = [
            *state["messages"][:-1],
            {**state["messages"][-1], "content": state["messages"][-1]["content"] + f" +{name}"},
        ]
        return {"messages": messages, "private": {"mark": name}}

    async def post(state: dict[str, Any], runtime: Any) -> dict[str, Any]:
        log.append(f"{name}.post")
        mark = state["private"]["mark"]
        return {
            "answers": [
                {**a, "message": {**a["message"], "content": a["message"]["content"] + f" <{mark}>"}}
                for a in state["answers"]
            ]
        }

    return PluginSpec(name=name, description=name, pre=pre, post=post)


async def test_stages_run_outside_in_then_inside_out() -> None:
    log: list[str] = []
    registry = builtin_registry()
    registry.add(recorder_plugin("outer", log))
    registry.add(recorder_plugin("inner", log))

    def answer(body: dict[str, Any]) -> str:
        log.append("model")
        return "A:" + body["messages"][-1]["content"]

    backend = ScriptedBackend(answer)
    response = await ask(
        make_runner(backend, registry=registry),
        {"model": "outer&inner&none-m", "messages": [{"role": "user", "content": "q"}]},
    )
    assert log == ["outer.pre", "inner.pre", "model", "inner.post", "outer.post"]
    assert backend.calls[0]["messages"][-1]["content"] == "q +outer +inner"
    assert response["choices"][0]["message"]["content"] == "A:q +outer +inner <inner> <outer>"
    assert response["optigraph"]["approach"] == "outer&inner&none"


async def test_a_plugin_alone_wraps_the_server_default() -> None:
    log: list[str] = []
    registry = builtin_registry()
    registry.add(recorder_plugin("mark", log))
    backend = ScriptedBackend(lambda body: "x")
    response = await ask(
        make_runner(backend, registry=registry, approach="re2"),
        {"model": "mark-m", "messages": [{"role": "user", "content": "q"}]},
    )
    assert response["optigraph"]["approach"] == "mark&re2"
    assert "Read the question again" in backend.calls[0]["messages"][-1]["content"]


async def test_a_plugin_with_post_and_no_rewriter_makes_the_wrapped_part_answer_whole() -> None:
    log: list[str] = []
    registry = builtin_registry()
    registry.add(recorder_plugin("mark", log))
    backend = ScriptedBackend(lambda body: "one two three four")
    chunks = await ask_streamed(
        make_runner(backend, registry=registry),
        {"model": "mark&none-m", "messages": [{"role": "user", "content": "q"}]},
    )
    contents = [c["delta"]["content"] for ch in chunks for c in ch["choices"] if (c.get("delta") or {}).get("content")]
    assert contents == ["one two three four <mark>"]  # post's answer, in one piece
    assert streamed_text(chunks) == "one two three four <mark>"


async def test_a_pre_only_plugin_lets_the_wrapped_part_stream() -> None:
    async def pre(state: dict[str, Any], runtime: Any) -> dict[str, Any]:
        return {"messages": state["messages"]}

    registry = builtin_registry()
    registry.add(PluginSpec(name="noop", description="", pre=pre))
    backend = ScriptedBackend(lambda body: "one two three four")
    chunks = await ask_streamed(
        make_runner(backend, registry=registry),
        {"model": "noop&none-m", "messages": [{"role": "user", "content": "q"}]},
    )
    contents = [c["delta"]["content"] for ch in chunks for c in ch["choices"] if (c.get("delta") or {}).get("content")]
    assert contents == ["one", " two", " three", " four"]


async def test_plugin_parameters_are_validated_like_approaches() -> None:
    from optigraph.errors import InvalidRequest

    runner = make_runner(ScriptedBackend())
    with pytest.raises(InvalidRequest) as info:
        await runner.prepare(
            {
                "model": "readurls&none-m",
                "messages": [{"role": "user", "content": "q"}],
                "optillm_params": {"readurls": {"max_urls": 0}},
            },
            client_key=None,
        )
    assert info.value.param == "optillm_params.readurls.max_urls"


async def test_a_plugin_failure_is_a_clear_error_naming_the_plugin() -> None:
    async def pre(state: dict[str, Any], runtime: Any) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    from optigraph.errors import OptigraphError

    registry = builtin_registry()
    registry.add(PluginSpec(name="broken", description="", pre=pre))
    with pytest.raises(OptigraphError, match="plugin 'broken' failed in its pre stage: RuntimeError: disk on fire"):
        await ask(
            make_runner(ScriptedBackend(), registry=registry),
            {"model": "broken&none-m", "messages": [{"role": "user", "content": "q"}]},
        )
