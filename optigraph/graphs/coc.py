"""`coc`: Chain of Code (Li et al., arXiv 2312.04474). The model reasons in code; the sandbox runs
what Python can run and the model emulates what it cannot (the "LMulator"), then the answer is
grounded in the program's output.

An approach, not a plugin: Chain of Code answers the question itself (it writes, runs and emulates
its own program and gives the final answer), so there is nothing for it to wrap; as a plugin it
would have to throw away the answer of whatever it wrapped. As an approach it composes like any
other (`readurls&coc`, `coc|z3`, `privacy&coc`).

1. `write`: the model writes one Python program that solves the problem and prints the answer.
   Steps that need judgement rather than computation are written as calls to helper functions it
   does not define (`is_fruit(x)`, `sentiment(text)`): the paper's "semantic" sub-tasks.
2. `execute`: the program runs in the sandbox. Functions it calls but never defines, imports or gets
   from the builtins (found from its syntax tree before the run) get a stub: a call whose value is
   already known returns it, an unknown one stops the program and is reported.
3. `emulate` (the LMulator, per call): the model is shown the program and the call that stopped it
   (`is_fruit('apple')`, with the arguments the real computation produced) and answers with the
   value it returns, as a Python literal. The value is remembered and the program runs again from
   the start, so every computable line is executed by Python and only the semantic calls are the
   model's, up to `max_emulations` calls.
4. `simulate` (the LMulator, whole program): when the program fails for another reason (a syntax
   error, an undefined variable or method, an exception), when the emulation budget is spent or a
   value is not a literal, or when the sandbox refuses to run anything (fail closed: a required
   layer is missing, so nothing runs), the model traces the program's execution line by line,
   keeping the state of its variables, and writes what it would print. This is the paper's
   "CoC (LM)" fallback; the notes say why it was used.
5. `answer`: one call answers from the program and its output (real or emulated; streamed).
   Without a program (the model wrote none) the same call answers the conversation directly.

Graph: START -> write -> execute -> (emulate -> execute)* -> [simulate] -> answer -> END.
Cost: 1 + max_emulations + 1 + 1 calls at most, all dependent (2 when the first run succeeds).
"""

from __future__ import annotations

import ast
import builtins
import re
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.answers import code_blocks, extract_normalized
from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.nodes.common import answer_of, generation_params, helper_params
from optigraph.nodes.execute import (
    ExecutionState,
    execute,
    extract_code,
    failure_report,
    printed_answer,
    unavailable,
)
from optigraph.nodes.generate import generate_final
from optigraph.nodes.transform import with_system_instructions
from optigraph.sandbox import DEFAULT_ALLOWED_MODULES

WRITE_INSTRUCTIONS = """Solve the problem by writing one Python program (Chain of Code). Reason in \
code: compute with Python what can be computed. For any step that needs knowledge or judgement \
rather than computation (is this word a fruit? is this sentence sarcastic? what is the capital of \
X?), call a helper function with a descriptive name and do NOT define it, e.g. `if is_fruit(item):`. \
Such calls are answered for you when the program runs. End by printing the answer with print().

Reply with a short plan, then the whole program in one ```python fenced block. The program runs on \
its own: no input, no files, no network; it may import only: {modules}."""

EMULATE_REQUEST = """You are emulating a Python interpreter for a program that calls a function \
with no Python definition. Decide what the call returns from its name, its arguments and the \
program's purpose.

The program:
```python
{code}
```

The call being evaluated now: `{call}`
{known}
Reply with only the value this call returns, as a Python literal (for example True, 3, 'red', \
['a', 'b']), on the last line, after `RESULT:`."""

SIMULATE_REQUEST = """Act as the Python interpreter for this program: go through its execution \
line by line, keeping track of the program state (the values of the variables) in short comments. \
Where a line calls a function that is not defined, decide what it returns from its name, its \
arguments and the program's purpose.

```python
{code}
```
{why}
Then write exactly what the program prints, in one ```output fenced block at the end."""

GROUNDED_INSTRUCTIONS = """The problem was solved with this program:
```python
{code}
```

What the program printed ({how}):
```
{output}
```

The printed output is the computed result: do not work the problem out again and do not change the \
value. In two or three sentences, say what the result means for the question, then state the final \
answer, which is the value the program printed."""

PENDING = "__coc_pending__:"
_PENDING_LINE = re.compile(re.escape(PENDING) + r"(.*)$", re.MULTILINE)
_RESULT = re.compile(r"RESULT\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE | re.DOTALL)
OUTPUT_IN_PROMPT = 6000  # characters of program output shown to the model
OVERRIDE = "\n\nThe program printed {value}, which the explanation above contradicts: the computed result stands.\nFinal answer: {value}"

# Prepended to the program: a stub for each semantic function. `__coc_values` maps the text of a
# call (name and argument reprs) to the value the model gave it; an unknown call stops the program
# with an exception its own `except Exception` cannot swallow.
STUBS = """class __CocPending(BaseException):
    pass


__coc_values = {values!r}


def __coc_stub(name):
    def call(*args, **kwargs):
        key = name + "(" + ", ".join([repr(a) for a in args] + [k + "=" + repr(v) for k, v in kwargs.items()]) + ")"
        if key in __coc_values:
            return __coc_values[key]
        raise __CocPending("{marker}" + key)
    return call


"""


class CocParams(ApproachParams):
    max_emulations: int = Field(8, ge=0, le=32, description="Semantic-function calls the model emulates at most.")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Wall-clock limit of one program run, in seconds.")
    memory_mb: int = Field(512, ge=128, le=4096, description="Address-space limit of one program run, in MiB.")
    write_temperature: float = Field(0.2, ge=0.0, le=2.0, description="Temperature of the program-writing call.")
    write_max_tokens: int = Field(1536, ge=1, le=32768, description="max_tokens of the program-writing call.")
    emulate_max_tokens: int = Field(256, ge=1, le=8192, description="max_tokens of one emulated call.")
    simulate_max_tokens: int = Field(2048, ge=1, le=32768, description="max_tokens of the whole-program emulation.")


class CocState(ExecutionState, total=False):
    plan: str  # the model's reply with the program
    code: str  # the program ("" when it wrote none)
    semantic: list[str]  # functions the program calls but never defines
    values: dict[str, Any]  # call text -> the value the model gave it
    pending: str  # the call that stopped the last run
    output: str  # what the program printed (real or emulated)
    how: str  # where the output came from, as the answer call is told
    simulate_reason: str


def semantic_functions(code: str) -> list[str]:
    """Names the program calls as functions but never binds (assigns, defines, imports, takes as a
    parameter) and that are not builtins; [] when it does not parse."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    bound: set[str] = set(dir(builtins))
    called: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
            if any(a.name == "*" for a in node.names):
                return []  # a star import may define anything: no stubs
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called.append(node.func.id)
    return sorted({name for name in called if name not in bound})


def with_stubs(code: str, semantic: list[str], values: dict[str, Any]) -> str:
    """The program with a stub bound to each semantic function, answering the known calls."""
    if not semantic:
        return code
    binds = "".join(f"{name} = __coc_stub({name!r})\n" for name in semantic)
    return STUBS.format(values=values, marker=PENDING) + binds + "\n" + code


def literal(text: str) -> tuple[bool, Any]:
    """(True, value) for the Python literal after the last `RESULT:` (or the reply's last line)."""
    found = _RESULT.findall(text)
    candidate = found[-1] if found else (text.strip().splitlines() or [""])[-1]
    candidate = candidate.strip().strip("`").strip()
    try:
        return True, ast.literal_eval(candidate)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _params(state: CocState) -> dict[str, Any]:
    return state.get("params") or {}


async def write(state: CocState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    p = _params(state)
    messages = with_system_instructions(
        state["messages"], WRITE_INSTRUCTIONS.format(modules=", ".join(DEFAULT_ALLOWED_MODULES))
    )
    call = helper_params(state, temperature=p["write_temperature"], max_tokens=p["write_max_tokens"])
    completion = await runtime.context.llm.chat(messages, node="write", **call)
    code = extract_code(completion.text) or ""
    semantic = semantic_functions(code)
    if not code:
        note = "write: no program in the reply; answering directly"
    else:
        note = (
            f"write: a program with semantic functions: {', '.join(semantic)}"
            if semantic
            else "write: a program with no semantic functions"
        )
    return {
        "plan": completion.text,
        "code": code,
        "semantic": semantic,
        "values": {},
        "notes": [note],
        "usage": completion.usage,
    }


async def run_program(state: CocState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    p = _params(state)
    values = state.get("values") or {}
    program = with_stubs(state["code"], state.get("semantic") or [], values)
    attempt = len(state.get("executions") or []) + 1
    update = await execute(
        program,
        node="execute",
        attempt=attempt,
        level=runtime.context.sandbox_level,
        timeout_s=p["timeout_s"],
        memory_mb=p["memory_mb"],
    )
    record = update["executions"][0]
    pending = _PENDING_LINE.findall(record.get("stderr") or "")
    update["pending"] = pending[-1].strip() if pending and not record["ok"] else ""
    if record["ok"]:
        update["output"] = record["stdout"]
        update["how"] = (
            "run by Python; the values of the undefined helper calls were given by the model"
            if values
            else "run by Python"
        )
    elif unavailable(record):
        update["simulate_reason"] = "the sandbox did not run the program (a required layer is missing)"
    elif update["pending"]:
        update["notes"].append(f"execute: stopped at the semantic call {update['pending']}")
        if len(values) >= p["max_emulations"]:
            update["simulate_reason"] = f"it made more than {p['max_emulations']} semantic calls"
            update["pending"] = ""
    else:
        update["simulate_reason"] = "it failed when run:\n" + failure_report(record, limit=1500)
    return update


async def emulate(state: CocState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The LMulator for one call: the value a semantic function returns for these arguments."""
    p = _params(state)
    values = dict(state.get("values") or {})
    known = "".join(f"\n- `{k}` returned {v!r}" for k, v in values.items())
    request = EMULATE_REQUEST.format(
        code=state["code"], call=state["pending"], known=f"\nCalls already answered:{known}\n" if known else ""
    )
    call = helper_params(state, temperature=0.0, max_tokens=p["emulate_max_tokens"])
    completion = await runtime.context.llm.chat([{"role": "user", "content": request}], node="emulate", **call)
    ok, value = literal(completion.text)
    if not ok:
        return {
            "simulate_reason": f"the emulated value of {state['pending']} was not a Python literal",
            "notes": [f"emulate: no literal value for {state['pending']}"],
            "usage": completion.usage,
        }
    values[state["pending"]] = value
    return {"values": values, "notes": [f"emulate: {state['pending']} -> {value!r}"], "usage": completion.usage}


async def simulate(state: CocState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The LMulator for the whole program: the model traces it and says what it prints."""
    p = _params(state)
    why = state.get("simulate_reason") or ""
    values = state.get("values") or {}
    known = "".join(f"\n- `{k}` returns {v!r}" for k, v in values.items())
    context = f"\nIt was not run to the end by Python because {why}\n" if why else "\n"
    if known:
        context += f"Semantic calls already answered:{known}\n"
    request = SIMULATE_REQUEST.format(code=state["code"], why=context)
    call = helper_params(state, temperature=0.0, max_tokens=p["simulate_max_tokens"])
    completion = await runtime.context.llm.chat([{"role": "user", "content": request}], node="simulate", **call)
    blocks = [code for lang, code in code_blocks(completion.text) if lang in ("output", "text", "")]
    output = blocks[-1] if blocks else completion.text
    return {
        "output": output,
        "how": "emulated by the model, not run",
        "usage": completion.usage,
        "notes": [f"simulate: the model emulated the program because {why.splitlines()[0] if why else 'asked'}"],
    }


def program_result(state: CocState) -> str | None:
    """The answer Python computed: the last line the program printed, when Python ran it and that line
    holds an extractable answer (a number, a choice...); None otherwise (emulated, or no clear value)."""
    if not (state.get("how") or "").startswith("run by Python"):
        return None
    return printed_answer(state.get("output") or "")


async def answer(state: CocState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The model explains the program's result. When Python computed a clear value and the model's
    own final answer differs (a small model re-derives and overrides it), the program's value stands:
    it is appended as the final answer, and the run's notes say so. Such an answer is sent whole (it
    cannot be streamed before it is checked)."""
    notes: list[str] = []
    result = program_result(state)
    if state.get("code"):
        instructions = GROUNDED_INSTRUCTIONS.format(
            code=state["code"],
            how=state.get("how") or "run by Python",
            output=(state.get("output") or "").strip()[-OUTPUT_IN_PROMPT:],
        )
        messages = with_system_instructions(state["messages"], instructions)
    else:
        messages = state["messages"]
    generating = {**state, "stream_choice": None} if result is not None else state
    completion = await generate_final(generating, runtime, messages, node="answer", **generation_params(state))
    final = answer_of(completion.choices[0])
    text = final["message"].get("content") or ""
    said = extract_normalized(text) if result is not None else None
    if result is not None and said is not None and said != result:
        final["message"]["content"] = text.rstrip() + OVERRIDE.format(value=result)
        notes.append(
            f"answer: the model answered {said!r}, the program computed {result!r}; the program's result stands"
        )
    return {"answers": [final], "usage": completion.usage, "notes": notes}


def after_write(state: CocState) -> str:
    return "execute" if state.get("code") else "answer"


def after_run(state: CocState) -> str:
    runs = state.get("executions") or []
    if runs and runs[-1].get("ok"):
        return "answer"
    return "emulate" if state.get("pending") else "simulate"


def after_emulate(state: CocState) -> str:
    return "execute" if state.get("pending") in (state.get("values") or {}) else "simulate"


def build() -> StateGraph:
    graph = StateGraph(CocState, context_schema=RunContext)
    graph.add_node("write", write)
    graph.add_node("execute", run_program)
    graph.add_node("emulate", emulate)
    graph.add_node("simulate", simulate)
    graph.add_node("answer", answer)
    graph.add_edge(START, "write")
    graph.add_conditional_edges("write", after_write, ["execute", "answer"])
    graph.add_conditional_edges("execute", after_run, ["answer", "emulate", "simulate"])
    graph.add_conditional_edges("emulate", after_emulate, ["execute", "simulate"])
    graph.add_edge("simulate", "answer")
    graph.add_edge("answer", END)
    return graph


SPEC = ApproachSpec(
    name="coc",
    description="Chain of Code: reasons in a program, runs it in the sandbox and lets the model emulate "
    "the calls (or, failing that, the lines) Python cannot run, then answers from the output.",
    build=build,
    params=CocParams,
    papers=("arXiv:2312.04474",),
    needs=frozenset({"text", "sandbox"}),  # it runs model-written code (the plugins:code scope)
    calls="max_emulations + 3",
    rounds="max_emulations + 3",
    streams_final=True,
)
