"""coc (Chain of Code): the computable lines run in the real sandbox, the semantic calls are emulated by
the (scripted) model, other failures and a sandbox that refuses fall back to whole-program emulation."""

import pathlib
import re
import sys
from functools import partial

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest
from scripted import ScriptedBackend, last_user, run_approach

from optigraph.core.answers import extract_normalized
from optigraph.core.cost import evaluate
from optigraph.core.llm import message_text
from optigraph.engine.registry import builtin_registry
from optigraph.graphs.coc import SPEC, literal, semantic_functions, with_stubs
from optigraph.nodes import execute as execute_module
from optigraph.sandbox import run_python

QUESTION = [
    {
        "role": "user",
        "content": "I have an apple, a chair, a banana and a cherry. Each fruit costs 3 "
        "dollars. How much do the fruits cost in all?",
    }
]
PROGRAM = """items = ["apple", "chair", "banana", "cherry"]
fruits = [item for item in items if is_fruit(item)]
total = 3 * len(fruits)
print(f"fruits={fruits} total={total}")"""
FRUITS = {"apple": True, "chair": False, "banana": True, "cherry": True}


def plan(code: str) -> str:
    return f"Count the fruits with a semantic check, then multiply.\n```python\n{code}\n```"


def kind(body) -> str:
    system = "\n".join(message_text(m) for m in body["messages"] if m.get("role") == "system")
    user = last_user(body)
    if "What the program printed" in system:
        return "answer"
    if "Chain of Code" in system:
        return "write"
    if user.startswith("You are emulating a Python interpreter"):
        return "emulate"
    if user.startswith("Act as the Python interpreter"):
        return "simulate"
    return "plain"


def scripted(code: str, simulated: str = "fruits=['apple', 'banana', 'cherry'] total=9"):
    def respond(body):
        call = kind(body)
        if call == "write":
            return plan(code)
        if call == "emulate":
            item = re.search(r"is_fruit\('(\w+)'\)`", last_user(body)).group(1)
            return f"An {item} is {'a fruit' if FRUITS[item] else 'furniture'}.\nRESULT: {FRUITS[item]}"
        if call == "simulate":
            return f"items = [...]\n# fruits = ['apple', 'banana', 'cherry']\n```output\n{simulated}\n```"
        if call == "answer":
            system = message_text(body["messages"][0])
            total = re.search(r"total=(\d+)", system).group(1)
            return f"The fruits cost {total} dollars."
        return "plain"

    return respond


def kinds(backend: ScriptedBackend) -> list[str]:
    return [kind(body) for body in backend.calls]


def test_semantic_functions_are_the_called_names_never_bound():
    code = (
        "import math\nfrom collections import Counter\n"
        "def helper(x):\n    return sentiment(x) + len(x)\n"
        "total = sum(helper(w) for w in words())\nprint(math.sqrt(total), Counter(), is_fruit(y := 1))\n"
        "try:\n    pass\nexcept ValueError as err:\n    print(err)\n"
    )
    assert semantic_functions(code) == ["is_fruit", "sentiment", "words"]
    assert semantic_functions("def broken(:") == []
    assert semantic_functions("from math import *\nprint(floor(2.5))") == []


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("It is a fruit.\nRESULT: True", True),
        ("RESULT: ['a', 'b']", ["a", "b"]),
        ("RESULT: `3`", 3),
        ("'red'", "red"),
    ],
)
def test_emulated_values_are_python_literals(reply, value):
    assert literal(reply) == (True, value)


def test_a_reply_that_is_not_a_literal_is_refused():
    assert literal("RESULT: open('/etc/passwd')") == (False, None)


async def test_computable_lines_run_and_the_semantic_calls_are_emulated():
    backend = ScriptedBackend(scripted(PROGRAM))
    state, _ = await run_approach(SPEC, QUESTION, backend)

    assert kinds(backend) == ["write", "emulate", "emulate", "emulate", "emulate", "answer"]
    emulated = [re.search(r"`(is_fruit\(.*?\))`", last_user(b)).group(1) for b in backend.calls[1:5]]
    # the arguments come from the real computation, in the order Python reached them
    assert emulated == ["is_fruit('apple')", "is_fruit('chair')", "is_fruit('banana')", "is_fruit('cherry')"]
    assert state["values"] == {f"is_fruit({k!r})": v for k, v in FRUITS.items()}
    runs = state["executions"]
    assert len(runs) == 5 and runs[-1]["ok"]
    assert runs[-1]["stdout"].strip() == "fruits=['apple', 'banana', 'cherry'] total=9"  # computed by Python
    assert "total=9" in message_text(backend.calls[-1]["messages"][0])
    assert state["answers"][0]["message"]["content"] == "The fruits cost 9 dollars."
    assert "emulate: is_fruit('chair') -> False" in state["notes"]


async def test_a_program_without_semantic_calls_runs_once():
    backend = ScriptedBackend(scripted('print(f"total={3 * 3}")'))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend) == ["write", "answer"]
    assert state["answers"][0]["message"]["content"] == "The fruits cost 9 dollars."


async def test_another_failure_falls_back_to_emulating_the_whole_program():
    backend = ScriptedBackend(scripted(PROGRAM.replace("total = 3", "total = undefined_price")))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert kinds(backend)[-2:] == ["simulate", "answer"]
    simulate = last_user(backend.calls[-2])
    assert "NameError" in simulate and "is_fruit('apple')` returns True" in simulate
    assert "emulated by the model, not run" in message_text(backend.calls[-1]["messages"][0])
    assert state["answers"][0]["message"]["content"] == "The fruits cost 9 dollars."


async def test_the_emulation_budget_bounds_the_calls():
    backend = ScriptedBackend(scripted(PROGRAM))
    state, _ = await run_approach(SPEC, QUESTION, backend, params={"max_emulations": 2})
    assert kinds(backend) == ["write", "emulate", "emulate", "simulate", "answer"]
    assert len(backend.calls) <= evaluate(SPEC.calls, SPEC.validate_params({"max_emulations": 2}))
    assert any("more than 2 semantic calls" in n for n in state["notes"])


async def test_an_escape_through_a_stub_value_is_not_possible(tmp_path):
    # a value is a literal or nothing: the model cannot smuggle code into the program through it
    program = with_stubs("print(f(1))", ["f"], {"f(1)": "__import__('os').system('touch x')"})
    result = await run_python(program)
    assert result.ok and result.stdout.strip() == "__import__('os').system('touch x')"


@pytest.fixture
def no_namespaces_or_landlock(monkeypatch):
    monkeypatch.setattr(
        execute_module, "run_python", partial(run_python, withhold_layers=("namespaces", "landlock"), audit_guard=False)
    )


async def test_a_sandbox_missing_a_required_layer_runs_nothing_and_the_model_emulates(
    tmp_path, no_namespaces_or_landlock
):
    sentinel = tmp_path / "ran.txt"
    backend = ScriptedBackend(scripted(f"open({str(sentinel)!r}, 'w').write('ran')\n{PROGRAM}"))
    state, _ = await run_approach(SPEC, QUESTION, backend)
    assert not sentinel.exists()
    assert kinds(backend) == ["write", "simulate", "answer"]
    [run] = state["executions"]
    assert run["error_kind"] == "unavailable"
    assert any(n.startswith("execute: run 1 not started: sandbox level 'strict' requires") for n in state["notes"])
    assert any(
        "simulate: the model emulated the program because the sandbox did not run the program" in n
        for n in state["notes"]
    )
    assert state["answers"][0]["message"]["content"] == "The fruits cost 9 dollars."


def test_registered_as_an_approach_with_its_cost():
    spec = builtin_registry().get("coc")
    assert spec.kind == "approach" and spec.papers == ("arXiv:2312.04474",)
    assert evaluate(spec.calls, spec.validate_params(None)) == 11


async def test_the_programs_result_stands_when_the_explanation_contradicts_it():
    def respond(body):
        if kind(body) == "write":
            return plan("print(2**20 % 7)")
        return "2^3 is 1 mod 7, so 2^20 is 1 mod 7.\nFinal answer: 1"  # a small model re-deriving, wrongly

    backend = ScriptedBackend(respond)
    state, _ = await run_approach(SPEC, [{"role": "user", "content": "What is 2^20 mod 7?"}], backend)
    content = state["answers"][0]["message"]["content"]
    assert content.startswith("2^3 is 1 mod 7") and content.rstrip().endswith("Final answer: 4")
    assert extract_normalized(content) == "4"
    assert any("the program computed '4'" in note for note in state["notes"])


async def test_an_explanation_that_agrees_is_kept_as_it_is():
    def respond(body):
        return plan("print(2**20 % 7)") if kind(body) == "write" else "It is 4.\nFinal answer: 4"

    backend = ScriptedBackend(respond)
    state, _ = await run_approach(SPEC, [{"role": "user", "content": "What is 2^20 mod 7?"}], backend)
    assert state["answers"][0]["message"]["content"] == "It is 4.\nFinal answer: 4"
