"""`z3`: the model formalises the problem as a Z3 or SymPy program, a sandbox runs it, and the
answer is grounded in what the solver printed. No paper defines this exact recipe; it is the
"program-aided" pattern of PAL (Gao et al., arXiv 2211.10435) and Program of Thoughts (Chen et al.,
arXiv 2211.12588), with an SMT solver / computer algebra system as the interpreter.

1. `analyze`: the model analyses the problem, says whether a solver applies
   (`SOLVER_CAN_BE_APPLIED: True/False`) and, if so, writes a program that prints its result.
2. `execute`: the program runs in the sandbox (`optigraph.sandbox`: separate process, no network,
   only a temp dir, time and memory limits). A failure (error, timeout, refusal, no output) goes to
   `fix`, which shows the model its program and the error and asks for a corrected one, until
   `max_attempts` runs were made. No fix is requested after the last run.
3. `answer`: one call answers from the analysis and the solver's output (streamed).
   `reason`: when the solver does not apply, or every run failed, a plain answer (streamed); the
   notes say why.

Fallback without execution: when the sandbox cannot put in force every layer the server's sandbox
level requires (docs/sandbox.md), no program runs; `execute` records the run as "unavailable" with
the missing layers in its note, and the graph goes straight to `reason` (no fix is requested: the
program is not at fault), so the answer is the model's plain answer to the conversation.

Graph: START -> analyze -> (execute <-> fix) -> answer | reason -> END.
Cost: at most 1 + (max_attempts - 1) + 1 = max_attempts + 1 calls, all dependent; plus up to
max_attempts sandbox runs (2 calls and no program run when the sandbox is unavailable). Usage is
summed over every call.
"""

from __future__ import annotations

import re
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.nodes.common import answer_of, generation_params, helper_params
from optigraph.nodes.execute import (
    ExecutionState,
    execute,
    extract_code,
    failure_report,
    unavailable,
    without_code,
)
from optigraph.nodes.generate import generate_final
from optigraph.nodes.transform import with_system_instructions
from optigraph.sandbox import DEFAULT_ALLOWED_MODULES

ANALYSIS_INSTRUCTIONS = """Before answering, decide whether the problem can be solved exactly by \
formalising it for the Z3 SMT solver or for SymPy (constraints, equations, logic puzzles, \
scheduling, optimisation, exact arithmetic, algebra).

Reply in this order:
1. A short analysis: the unknowns, the constraints and what is asked.
2. One line that is exactly `SOLVER_CAN_BE_APPLIED: True` or `SOLVER_CAN_BE_APPLIED: False`.
3. Only if True: one complete Python program in a single ```python fenced block that solves the \
problem with z3 (`from z3 import *`) or sympy and prints the result with print(), labelled so it can \
be read without the code (for example `print(f"x = {{m[x]}}")`).

The program runs on its own in a sandbox: no network, no files outside its working directory, no \
input, and it may import only these modules: {modules}."""

FIX_REQUEST = """The program failed.

{report}

The program:
```python
{code}
```

Fix it. Reply with the whole corrected program in one ```python fenced block; it must print its \
result."""

GROUNDED_INSTRUCTIONS = """A solver program was written and run to answer the user's question.

Analysis of the problem:
{analysis}

The program:
```python
{code}
```

What the program printed (exact, computed by the solver):
```
{output}
```

Answer the user's question using this output. Explain the result briefly in the terms of the \
question and state the final answer clearly."""

_APPLIES = re.compile(r"SOLVER_CAN_BE_APPLIED\W*(true|false|yes|no)\b", re.IGNORECASE)
_VERDICT_LINE = re.compile(r"^.*SOLVER_CAN_BE_APPLIED.*\n?", re.IGNORECASE | re.MULTILINE)
OUTPUT_IN_PROMPT = 8000  # characters of solver output shown to the model


class Z3Params(ApproachParams):
    max_attempts: int = Field(3, ge=1, le=10, description="Program runs at most: the first and its fixes.")
    timeout_s: float = Field(30.0, gt=0, le=300, description="Wall-clock limit of one run, in seconds.")
    memory_mb: int = Field(512, ge=128, le=8192, description="Address-space limit of one run, in MiB.")
    analysis_temperature: float = Field(0.1, ge=0.0, le=2.0, description="Temperature of the analysis call.")
    analysis_max_tokens: int = Field(1024, ge=1, le=32768, description="max_tokens of the analysis call.")
    fix_temperature: float = Field(0.1, ge=0.0, le=2.0, description="Temperature of each fix call.")
    fix_max_tokens: int = Field(1024, ge=1, le=32768, description="max_tokens of each fix call.")
    answer_max_tokens: int | None = Field(
        None, ge=1, le=131072, description="Final answer's max_tokens; default: the client's, else 4096."
    )


class Z3State(ExecutionState, total=False):
    analysis: str  # the model's analysis (its first reply)
    applicable: bool  # whether it said a solver applies and gave a program
    code: str  # the program to run next ("" when a fix gave none)


def solver_applies(text: str) -> bool | None:
    """The model's SOLVER_CAN_BE_APPLIED verdict (the last one), or None when it gave none."""
    verdicts = _APPLIES.findall(text)
    return verdicts[-1].lower() in ("true", "yes") if verdicts else None


def _params(state: Z3State) -> dict[str, Any]:
    return state.get("params") or {}


def _analysis_messages(state: Z3State) -> list[dict[str, Any]]:
    instructions = ANALYSIS_INSTRUCTIONS.format(modules=", ".join(DEFAULT_ALLOWED_MODULES))
    return with_system_instructions(state["messages"], instructions)


async def analyze(state: Z3State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    p = _params(state)
    call = helper_params(state, temperature=p["analysis_temperature"], max_tokens=p["analysis_max_tokens"])
    completion = await runtime.context.llm.chat(_analysis_messages(state), node="analyze", **call)
    text = completion.text
    code = extract_code(text)
    verdict = solver_applies(text)
    applicable = bool(code) and verdict is not False  # no verdict but a program: try it
    if verdict is False:
        note = "analyze: the model said a solver does not apply"
    elif not code:
        note = "analyze: no program in the analysis"
    else:
        note = "analyze: a solver program was written"
    return {"analysis": text, "applicable": applicable, "code": code or "", "notes": [note], "usage": completion.usage}


async def run_program(state: Z3State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    p = _params(state)
    attempt = len(state.get("executions") or []) + 1
    update = await execute(
        state["code"],
        node="execute",
        attempt=attempt,
        level=runtime.context.sandbox_level,
        timeout_s=p["timeout_s"],
        memory_mb=p["memory_mb"],
    )
    last = update["executions"][0]
    if not last["ok"] and not unavailable(last) and attempt >= p["max_attempts"]:
        update["notes"].append(f"execute: no attempts left after {attempt} run(s)")
    return update


async def fix(state: Z3State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    p = _params(state)
    last = (state.get("executions") or [])[-1]
    request = FIX_REQUEST.format(report=failure_report(last), code=last.get("code", ""))
    messages = [
        *_analysis_messages(state),
        {"role": "assistant", "content": state.get("analysis", "")},
        {"role": "user", "content": request},
    ]
    call = helper_params(state, temperature=p["fix_temperature"], max_tokens=p["fix_max_tokens"])
    completion = await runtime.context.llm.chat(messages, node="fix", **call)
    code = extract_code(completion.text)
    notes = [] if code else ["fix: the reply had no program; answering without the solver"]
    return {"code": code or "", "notes": notes, "usage": completion.usage}


async def answer(state: Z3State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The final answer, grounded in the last (successful) run."""
    last = (state.get("executions") or [])[-1]
    instructions = GROUNDED_INSTRUCTIONS.format(
        analysis=_VERDICT_LINE.sub("", without_code(state.get("analysis", ""))).strip() or "(none)",
        code=last.get("code", ""),
        output=(last.get("stdout") or "").strip()[-OUTPUT_IN_PROMPT:],
    )
    messages = with_system_instructions(state["messages"], instructions)
    completion = await generate_final(state, runtime, messages, node="answer", **_final_params(state))
    return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}


async def reason(state: Z3State, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """A plain answer to the conversation: the solver did not apply, no run succeeded, or the sandbox
    could not run programs at all."""
    runs = state.get("executions") or []
    if runs and unavailable(runs[-1]):
        missing = ", ".join(runs[-1].get("missing_layers") or {})
        note = f"reason: answering without the solver; the sandbox could not run the program (missing: {missing})"
    elif runs:
        note = f"reason: answering without the solver; {len(runs)} run(s) failed, last: {runs[-1].get('error_kind')}"
    else:
        note = "reason: answering without the solver; it was not applied"
    completion = await generate_final(state, runtime, state["messages"], node="reason", **_final_params(state))
    return {"answers": [answer_of(completion.choices[0])], "notes": [note], "usage": completion.usage}


def _final_params(state: Z3State) -> dict[str, Any]:
    p = _params(state)
    request = state.get("request") or {}
    max_tokens = p.get("answer_max_tokens") or request.get("max_tokens") or 4096
    if request.get("max_completion_tokens") and not p.get("answer_max_tokens"):
        return generation_params(state)  # the client's own limit, in the field it chose
    return generation_params(state, max_tokens=max_tokens)


def after_analysis(state: Z3State) -> str:
    return "execute" if state.get("applicable") else "reason"


def after_run(state: Z3State) -> str:
    runs = state.get("executions") or []
    if runs and runs[-1].get("ok"):
        return "answer"
    if runs and unavailable(runs[-1]):
        return "reason"  # no program can run here: a fix would not help
    return "fix" if len(runs) < _params(state)["max_attempts"] else "reason"


def after_fix(state: Z3State) -> str:
    return "execute" if state.get("code") else "reason"


def build() -> StateGraph:
    graph = StateGraph(Z3State, context_schema=RunContext)
    graph.add_node("analyze", analyze)
    graph.add_node("execute", run_program)
    graph.add_node("fix", fix)
    graph.add_node("answer", answer)
    graph.add_node("reason", reason)
    graph.add_edge(START, "analyze")
    graph.add_conditional_edges("analyze", after_analysis, ["execute", "reason"])
    graph.add_conditional_edges("execute", after_run, ["answer", "fix", "reason"])
    graph.add_conditional_edges("fix", after_fix, ["execute", "reason"])
    graph.add_edge("answer", END)
    graph.add_edge("reason", END)
    return graph


SPEC = ApproachSpec(
    name="z3",
    description="Formalises the problem as a Z3/SymPy program, runs it in a sandbox (fixing it on "
    "failure), and answers from the solver's output; plain reasoning when it cannot.",
    build=build,
    params=Z3Params,
    papers=("arXiv:2211.10435", "arXiv:2211.12588"),
    needs=frozenset({"text", "sandbox"}),  # it runs model-written code (the plugins:code scope)
    calls="max_attempts + 1",
    rounds="max_attempts + 1",
    streams_final=True,
)
