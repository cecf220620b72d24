"""executecode: the request's Python and the model's Python run in the real sandbox; the model sees
what they printed; escapes are refused; a sandbox missing a required layer runs nothing."""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from engine_stack import make_runner
from scripted import ScriptedBackend, last_user

from optigraph.core.cost import evaluate
from optigraph.engine.runner import Runner, answer_choices
from optigraph.errors import InvalidRequest
from optigraph.nodes import execute as execute_module
from optigraph.plugins.executecode import SPEC, python_program
from optigraph.sandbox import run_python

SQUARES = "```python\nprint(sum(i * i for i in range(1, 11)))\n```"


async def run_state(runner: Runner, body: dict[str, Any]) -> dict[str, Any]:
    """The run's final graph state (answers, notes, private state) for a one-choice request."""
    prep = runner.prepare(body, client_key=None)
    if inspect.isawaitable(prep):  # a Runner that compiles off the event loop prepares asynchronously
        prep = await prep
    assert prep.compiled is not None
    state = prep.compiled.input(messages=prep.messages, request=prep.request, params=prep.params, stream_choice=None)
    return await prep.compiled.graph.ainvoke(
        state, {"configurable": {"thread_id": prep.run_id}}, context=runner.context(prep.run_id, prep.llm, None)
    )


def content(state: dict[str, Any]) -> str:
    return answer_choices(state["answers"])[0]["message"]["content"]


def test_only_blocks_labelled_python_make_the_program() -> None:
    text = "First\n```python\nx = 2\n```\nthen\n```\nrm -rf /\n```\n```py\nprint(x)\n```"
    assert python_program(text) == "x = 2\nprint(x)"
    assert python_program("no code here") is None


async def test_the_requests_code_runs_and_the_model_sees_its_output() -> None:
    backend = ScriptedBackend(lambda body: "The sum is 385.")
    question = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"What does this print?\n{SQUARES}"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            ],
        },
    ]
    state = await run_state(make_runner(backend), {"model": "executecode&none-m", "messages": question})

    [call] = backend.calls
    sent = call["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}  # the conversation is kept, not flattened
    assert sent[1]["content"][1]["type"] == "image_url"
    text = sent[1]["content"][0]["text"]
    assert text.startswith("What does this print?") and "Its output:" in text and "\n385\n" in text
    assert content(state) == "The sum is 385."
    assert state["private"]["request_run"]["stdout"].strip() == "385"
    assert "executecode.pre: run 1 succeeded" in " ".join(state["notes"])


async def test_a_failing_request_program_shows_the_model_its_error() -> None:
    backend = ScriptedBackend(lambda body: "It divides by zero.")
    body = {
        "model": "executecode&none-m",
        "messages": [{"role": "user", "content": "Why does this fail?\n```python\nprint(1 / 0)\n```"}],
    }
    await run_state(make_runner(backend), body)
    sent = last_user(backend.calls[0])
    assert "did not finish normally (error)" in sent and "ZeroDivisionError" in sent


async def test_the_time_limit_is_a_parameter_and_a_stopped_program_says_so() -> None:
    backend = ScriptedBackend(lambda body: "It never ends.")
    body = {
        "model": "executecode&none-m",
        "optillm_params": {"executecode": {"timeout_s": 1}},
        "messages": [
            {
                "role": "user",
                "content": "What about this?\n```python\nprint('start', flush=True)\nwhile True:\n    pass\n```",
            }
        ],
    }
    state = await run_state(make_runner(backend), body)
    sent = last_user(backend.calls[0])
    assert "did not finish normally (timeout)" in sent and "start" in sent
    assert state["private"]["request_run"]["error_kind"] == "timeout"


def answers_with_code(body: dict[str, Any]) -> str:
    if "Your Python code was run in a sandbox" in last_user(body):
        output = last_user(body).split("```")[1].strip()
        return f"The answer is {output}."
    return "Let me compute it.\n```python\nprint(2 ** 100 % 97)\n```"


async def test_code_in_the_answer_runs_and_the_final_answer_uses_its_output() -> None:
    backend = ScriptedBackend(answers_with_code)
    question = [{"role": "user", "content": "What is 2**100 mod 97?"}]
    state = await run_state(
        make_runner(backend), {"model": "executecode&none-m", "messages": question, "temperature": 0.3}
    )
    assert len(backend.calls) == 2  # the wrapped answer and one follow-up
    follow_up = backend.calls[1]
    assert follow_up["messages"][0] == question[0]
    assert follow_up["messages"][1]["role"] == "assistant" and "```python" in follow_up["messages"][1]["content"]
    assert follow_up["temperature"] == 0.3
    assert content(state) == f"The answer is {2**100 % 97}."
    notes = " ".join(state["notes"])
    assert "executecode.post[0]: run 1 succeeded" in notes and "rewritten from its program's output" in notes


async def test_max_rounds_zero_leaves_the_answer_and_runs_nothing() -> None:
    backend = ScriptedBackend(answers_with_code)
    state = await run_state(
        make_runner(backend),
        {
            "model": "executecode&none-m",
            "optillm_params": {"executecode": {"max_rounds": 0}},
            "messages": [{"role": "user", "content": "What is 2**100 mod 97?"}],
        },
    )
    assert len(backend.calls) == 1
    assert "```python" in content(state)


ESCAPES = {
    "network": "import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=2)\nprint('connected')",
    "passwd": "print(open('/etc/passwd').read())",
    "write_outside": "open({path!r}, 'w').write('escaped')\nprint('written')",
}


@pytest.mark.parametrize("attack", sorted(ESCAPES))
async def test_escape_attempts_in_an_answer_are_refused_and_the_answer_stays(attack: str, tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"
    reply = f"Here:\n```python\n{ESCAPES[attack].format(path=str(target))}\n```"
    backend = ScriptedBackend(lambda body: reply)
    state = await run_state(
        make_runner(backend), {"model": "executecode&none-m", "messages": [{"role": "user", "content": "Try it."}]}
    )
    assert len(backend.calls) == 1  # no follow-up: nothing ran to completion
    assert content(state) == reply
    assert not target.exists()
    notes = " ".join(state["notes"])
    assert "executecode.post[0]: run 1 failed (forbidden)" in notes
    assert "kept as the model wrote it; it failed (forbidden)" in notes
    assert "root:" not in str(backend.calls)


@pytest.fixture
def no_namespaces_or_landlock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox as on a kernel that offers neither namespaces nor Landlock (the hook off too)."""
    monkeypatch.setattr(
        execute_module, "run_python", partial(run_python, withhold_layers=("namespaces", "landlock"), audit_guard=False)
    )


async def test_a_sandbox_missing_a_required_layer_runs_nothing_and_says_why(
    tmp_path: Path, no_namespaces_or_landlock: None
) -> None:
    sentinel = tmp_path / "ran.txt"
    program = f"open({str(sentinel)!r}, 'w').write('ran')\nprint(42)"
    question = f"Run this:\n```python\n{program}\n```"
    reply = f"I would run:\n```python\n{program}\n```"
    backend = ScriptedBackend(lambda body: reply)
    state = await run_state(
        make_runner(backend), {"model": "executecode&none-m", "messages": [{"role": "user", "content": question}]}
    )
    assert not sentinel.exists()
    assert len(backend.calls) == 1
    assert last_user(backend.calls[0]) == question  # nothing said about an output that does not exist
    assert content(state) == reply
    notes = " ".join(state["notes"])
    assert "executecode.pre: run 1 not started: sandbox level 'strict' requires layers" in notes and "landlock" in notes
    assert "the request's code was not run; the conversation is unchanged" in notes
    assert "kept as the model wrote it; the sandbox could not run it" in notes
    assert state["private"]["request_run"]["error_kind"] == "unavailable"


async def test_an_explicit_lower_level_runs_it(tmp_path: Path, no_namespaces_or_landlock: None) -> None:
    sentinel = tmp_path / "ran.txt"
    backend = ScriptedBackend(lambda body: "ok")
    runner = make_runner(backend, sandbox_level="minimal")
    question = f"```python\nopen({str(sentinel)!r}, 'w').write('ran')\nprint(42)\n```"
    await run_state(runner, {"model": "executecode&none-m", "messages": [{"role": "user", "content": question}]})
    assert sentinel.read_text() == "ran"
    assert "\n42\n" in last_user(backend.calls[0])


def test_params_and_cost_formulas() -> None:
    params = SPEC.validate_params(None)
    assert params["max_rounds"] == 1 and params["timeout_s"] == 10.0
    assert evaluate(SPEC.calls, {**params, "max_rounds": 3}) == 3
    assert SPEC.needs == frozenset({"sandbox"}) and SPEC.pre is not None and SPEC.post is not None
    with pytest.raises(InvalidRequest):
        SPEC.validate_params({"max_rounds": 9})
