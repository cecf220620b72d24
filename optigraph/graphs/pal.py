"""`pal`: program-aided answers, after PAL ("Program-aided Language Models", Gao et al., arXiv
2211.10435) and Program of Thoughts (Chen et al., arXiv 2211.12588). The model does not compute in
prose: it writes a Python program that prints the answer, the sandbox runs it, and the printed
answers of several programs are voted.

1. `write`: a round of `batch` programs is sampled (one call, n completions). Each reply is a
   sentence or two saying how the answer is computed, then one program. The instructions are a
   system message, one worked question and program come before the conversation (PAL's prompts are
   few-shot; `example: false` leaves it out), and a one-line reminder ends the question (a small model
   follows the last instruction it reads, and a question often ends with its own "think step by
   step"). Generation stops where the program's block closes: nothing after it is used.
2. `run`: every new program runs in the sandbox (fail closed: where a layer the sandbox level needs
   is missing, nothing runs). Its answer is the last line it printed.
3. `repair`: a program that failed, printed nothing or was missing is shown to the model with its
   error, and the corrected program runs again, up to `max_repairs` times per program (the repairs
   of one round are concurrent).
4. After each round the programs' printed answers are voted, adaptively (`optigraph.nodes.adaptive`):
   another round is written unless the vote is settled or `samples` programs were written.
5. `prose`: when the programs disagree at the end (the leader is fewer than `min_lead` votes ahead)
   or none printed an answer (every program failed, or the sandbox refused to run any), the model
   answers the question directly `prose_samples` times; those answers are voted together with the
   programs' (one vote each; a prose answer cut at max_tokens does not vote unless nothing else did).
6. `finish` (no call): the winning answer. When a program printed it, the final message is that
   program's explanation in words, the program itself, what it printed and the final answer; when
   only prose reached it, the prose answer.

Graph: START -> write -> run -> (repair -> run)* -> (write again | prose | finish); prose -> finish -> END.
Cost: ceil(samples / batch) write calls (1 when not adaptive), at most samples * max_repairs repair
calls and 1 prose call; expected 1 call when the first round's programs run and agree.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, ClassVar, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.answers import extract_code, extract_normalized, without_code
from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachSpec, client_temperature
from optigraph.core.state import sorted_candidates
from optigraph.core.usage import add_usage
from optigraph.core.votes import StopRule, is_cut, majority, should_stop, vote_margin, vote_summary
from optigraph.nodes.adaptive import CALLS, EXPECTED_CALLS, AdaptiveParams, AdaptiveState, formula, round_size
from optigraph.nodes.common import answer_of, candidates_from, helper_params, text_answer
from optigraph.nodes.execute import ExecutionState, execute, failure_report, printed_answer, printed_line, unavailable
from optigraph.nodes.sample import param_or_client, sample_candidates
from optigraph.nodes.transform import with_system_instructions, with_user_suffix
from optigraph.sandbox import DEFAULT_ALLOWED_MODULES

DEFAULT_TEMPERATURE = 0.7
WRITE_MAX_TOKENS = 1024
# a line of the model's own answer (often a guess at what the program prints, before it ran)
_ANSWER_LINE = re.compile(r"\\boxed|final answer|the answer is|^\W*answer\b", re.IGNORECASE)

WRITE_INSTRUCTIONS = """Solve the problem with a Python program; do not work it out in prose. First \
say in one or two sentences how the answer is computed. Then write the whole program in one ```python \
fenced block: give each quantity in the problem a named variable, compute the answer step by step, \
and end with print(answer), printing only the final answer (a number, or a short word or phrase). \
The program runs on its own: no input, no files, no network; it may import only: {modules}."""

# Appended to the question: a small model follows the last instruction it reads, and a question
# often ends with its own ("think step by step, then give the final answer").
WRITE_REMINDER = """Answer with a program, not in prose: one or two sentences on how the answer is computed, then \
one ```python block that ends with print(answer)."""

# One worked question and program shown before the client's conversation, as PAL's prompts show
# several: a 1.5B coder model asked to "solve with a program" still answered 26 of 54 first replies in
# prose (each costing a repair call) and wrote long explanations and made-up outputs around the others.
EXAMPLE_QUESTION = """A baker makes 4 trays of 12 rolls. She sells 30 rolls and packs the rest in bags of 6. How many bags does she fill?"""
EXAMPLE_PROGRAM = """Rolls left after the sale, in whole bags of 6.

```python
trays = 4
rolls_per_tray = 12
sold = 30
bag_size = 6
left = trays * rolls_per_tray - sold
answer = left // bag_size
print(answer)
```"""

# Program calls stop where the program's block closes: what the model writes after it (a made-up
# ```output block, "the answer is ...") is unused, and was a third of a reply's tokens.
CODE_END = "\n```\n"

EXAMPLE_CODE = extract_code(EXAMPLE_PROGRAM) or ""

REPAIR_REQUEST = """The program did not print an answer.

{report}

Fix it: reply with the whole corrected program in one ```python fenced block. It must end by \
printing only the final answer."""

NO_PROGRAM = "The reply had no ```python program, so there was nothing to run."
# A confused small model sometimes hands back the worked example's program (3 of 40 multi-step
# problems on the real model ended on the example's answer): it answers the example, not the
# question, so it is repaired, not run.
COPIED_EXAMPLE = "That program is the worked example's, not one for this question: its numbers are the example's."

FINAL_MESSAGE = """{explanation}

```python
{code}
```

The program printed: {printed}
{agreement}
Final answer: {answer}"""


class PalParams(AdaptiveParams):
    budget_field: ClassVar[str] = "samples"
    samples: int = Field(5, ge=1, le=64, description="Programs to write (adaptive: at most).")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE, "Temperature of the programs and prose")
    max_repairs: int = Field(2, ge=0, le=8, description="Times a failing or silent program is repaired.")
    prose_samples: int = Field(
        1, ge=0, le=16, description="Prose answers drawn when programs disagree or none ran (0: never)."
    )
    write_max_tokens: int | None = Field(
        None,
        ge=1,
        le=32768,
        description=f"max_tokens of a program-writing or repair call; default: the client's, else {WRITE_MAX_TOKENS}.",
    )
    example: bool = Field(
        True,
        description="Show one worked question and its program before the conversation (PAL's few-shot "
        "prompt); false: the instructions alone.",
    )
    timeout_s: float = Field(10.0, gt=0, le=120, description="Wall-clock limit of one program run, in seconds.")
    memory_mb: int = Field(512, ge=128, le=4096, description="Address-space limit of one program run, in MiB.")


class Program(TypedDict, total=False):
    index: int  # order written
    reply: str  # the model's latest reply with this program
    code: str  # "" when the reply had none
    status: str  # pending | ran | failed | unavailable
    repairs: int
    report: str  # what went wrong in the last run, for the repair
    printed: str  # the last line printed (ran)
    answer: str | None  # the normalised answer printed (ran), None when not extractable


class PalState(ExecutionState, AdaptiveState, total=False):
    programs: list[Program]
    contested: bool  # the programs disagreed or none answered: prose answers were drawn


def _params(state: PalState) -> dict[str, Any]:
    return state.get("params") or {}


def _writing(state: PalState) -> list[dict[str, Any]]:
    instructions = WRITE_INSTRUCTIONS.format(modules=", ".join(DEFAULT_ALLOWED_MODULES))
    messages = with_user_suffix(with_system_instructions(state["messages"], instructions), WRITE_REMINDER)
    if not _params(state).get("example", True):
        return messages
    example = [
        {"role": "user", "content": f"{EXAMPLE_QUESTION}\n\n{WRITE_REMINDER}"},
        {"role": "assistant", "content": EXAMPLE_PROGRAM},
    ]
    first = next((i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")), len(messages))
    return [*messages[:first], *example, *messages[first:]]


def _write_limit(state: PalState) -> int:
    return int(param_or_client(state, "write_max_tokens", WRITE_MAX_TOKENS, client_key="max_tokens"))


def _program(index: int, reply: str) -> Program:
    if reply.count("```") % 2:  # stopped at CODE_END: the block is closed again for the final message
        reply = reply.rstrip() + "\n```"
    code = extract_code(reply) or ""
    copied = bool(code) and _same_program(code, EXAMPLE_CODE)
    return {
        "index": index,
        "reply": reply,
        "code": code,
        "status": "pending" if code and not copied else "failed",
        "repairs": 0,
        "report": COPIED_EXAMPLE if copied else "" if code else NO_PROGRAM,
    }


def _same_program(a: str, b: str) -> bool:
    """Whether two programs assign the same numbers in the same way (spacing, comments and what they
    print around the answer aside)."""

    def assignments(code: str) -> list[str]:
        lines = (line.split("#", 1)[0].replace(" ", "") for line in code.splitlines())
        return [line for line in lines if "=" in line and not line.startswith("print")]

    return assignments(a) == assignments(b)


async def write(state: PalState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """One round of programs."""
    p = _params(state)
    programs = list(state.get("programs") or [])
    drawn = int(state.get("drawn") or 0)
    n = round_size(p, drawn, "samples")
    temperature = param_or_client(state, "temperature", DEFAULT_TEMPERATURE)
    call = helper_params(state, temperature=temperature, max_tokens=_write_limit(state), stop=[CODE_END])
    completion = await runtime.context.llm.chat(_writing(state), node="write", n=n, partial=True, **call)
    new = [_program(len(programs) + i, c["text"]) for i, c in enumerate(candidates_from(completion))]
    missing = sum(not prog["code"] for prog in new)
    note = f"write: {len(new)} program(s)" + (f", {missing} without a program" if missing else "")
    return {"programs": programs + new, "drawn": drawn + n, "notes": [note], "usage": completion.usage}


async def run(state: PalState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Runs every pending program, concurrently."""
    p = _params(state)
    programs = list(state.get("programs") or [])
    pending = [i for i, prog in enumerate(programs) if prog["status"] == "pending"]
    updates = await asyncio.gather(
        *(
            execute(
                programs[i]["code"],
                node="run",
                attempt=programs[i]["repairs"] + 1,
                level=runtime.context.sandbox_level,
                timeout_s=p["timeout_s"],
                memory_mb=p["memory_mb"],
            )
            for i in pending
        )
    )
    executions: list[Any] = []
    notes: list[str] = []
    for i, update in zip(pending, updates):
        record = update["executions"][0]
        executions.append(record)
        notes.extend(f"program {programs[i]['index'] + 1}: {n}" for n in update["notes"])
        if record["ok"]:
            line = printed_line(record["stdout"]) or ""
            programs[i] = {**programs[i], "status": "ran", "printed": line, "answer": _printed_key(record["stdout"])}
        elif unavailable(record):
            programs[i] = {**programs[i], "status": "unavailable", "report": failure_report(record)}
        else:
            programs[i] = {**programs[i], "status": "failed", "report": failure_report(record, limit=1500)}
    return {"programs": programs, "executions": executions, "notes": notes}


def _printed_key(stdout: str) -> str | None:
    """What a program votes for: the answer on its last printed line, else that line as text."""
    answer = printed_answer(stdout)
    if answer is not None:
        return answer
    line = printed_line(stdout)
    return " ".join(line.lower().split()).strip(" .") or None if line else None


def _repairable(state: PalState) -> list[int]:
    limit = int(_params(state)["max_repairs"])
    return [
        i
        for i, prog in enumerate(state.get("programs") or [])
        if prog["status"] == "failed" and prog["repairs"] < limit
    ]


async def repair(state: PalState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Each failed program back to the model with its error; the corrected ones run next."""
    programs = list(state.get("programs") or [])
    todo = _repairable(state)
    call = helper_params(state, temperature=0.0, max_tokens=_write_limit(state), stop=[CODE_END])

    async def fix(i: int) -> Any:
        prog = programs[i]
        messages = [
            *_writing(state),
            {"role": "assistant", "content": prog["reply"]},
            {"role": "user", "content": REPAIR_REQUEST.format(report=prog["report"])},
        ]
        return await runtime.context.llm.chat(messages, node="repair", **call)

    completions = await asyncio.gather(*(fix(i) for i in todo))
    usage: list[Any] = []
    notes: list[str] = []
    for i, completion in zip(todo, completions):
        usage.append(completion.usage)
        fixed = _program(programs[i]["index"], completion.text)
        programs[i] = {**fixed, "repairs": programs[i]["repairs"] + 1}
        notes.append(
            f"repair: program {fixed['index'] + 1} rewritten"
            if fixed["code"]
            else f"repair: no program in the reply for program {fixed['index'] + 1}"
        )
    total = _sum_usage(usage)
    return {"programs": programs, "notes": notes, **({"usage": total} if total else {})}


def _sum_usage(usages: list[Any]) -> Any:
    total = None
    for u in usages:
        total = u if total is None else add_usage(total, u)
    return total


def _program_vote(programs: list[Program]) -> tuple[int, int]:
    answered = [prog for prog in programs if prog["status"] == "ran" and prog.get("answer")]
    if not answered:
        return 0, 0
    keys = [prog["answer"] for prog in answered]
    return vote_margin(majority(keys, keys))


def after_run(state: PalState) -> str:
    """Repair what failed; else write more programs until the vote is settled; then prose when the
    programs disagree or none answered, else finish."""
    if _repairable(state):
        return "repair"
    p = _params(state)
    programs = state.get("programs") or []
    if programs and all(prog["status"] == "unavailable" for prog in programs):
        return "prose" if p["prose_samples"] else "finish"  # the sandbox refuses: programs cannot help
    drawn, budget = int(state.get("drawn") or 0), int(p["samples"])
    leader, runner_up = _program_vote(programs)
    rule = StopRule.from_params(p)
    stop = should_stop(leader, runner_up, drawn, budget, rule)
    if p["adaptive"] and not stop:
        return "write"
    stopped_early = drawn < budget  # the stopping rule settled it before the budget was spent
    agree = leader > 0 and (stopped_early or leader - runner_up >= rule.min_lead)
    return "finish" if agree or not p["prose_samples"] else "prose"


async def prose(state: PalState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Direct answers to the conversation, to vote with the programs."""
    p = _params(state)
    temperature = param_or_client(state, "temperature", DEFAULT_TEMPERATURE)
    out = await sample_candidates(state, runtime, n=int(p["prose_samples"]), node="prose", temperature=temperature)
    return {**out, "contested": True}


async def finish(state: PalState) -> dict[str, Any]:
    """Votes the programs' printed answers with any prose answers; the winner's message."""
    programs = [prog for prog in state.get("programs") or [] if prog["status"] == "ran" and prog.get("answer")]
    prose_answers = sorted_candidates(state)
    keys: list[str | None] = [prog["answer"] for prog in programs]
    keys += [extract_normalized(c.get("text") or "") for c in prose_answers]
    texts = [prog["printed"] for prog in programs] + [c.get("text") or "" for c in prose_answers]
    cut = [False] * len(programs) + [is_cut(c) for c in prose_answers]
    if not texts:
        return {
            "answers": [text_answer("No program printed an answer and no direct answer was drawn.")],
            "notes": ["finish: nothing to vote on"],
        }
    result = majority(keys, texts, cut=cut)
    top = result.top
    note = f"finish: {len(top.members)} of {len(texts)} agree ({vote_summary(result)})"
    backing = [programs[m] for m in top.members if m < len(programs)]
    if not backing:
        return {"answers": [answer_of(prose_answers[result.winner - len(programs)])], "notes": [note]}
    chosen = backing[0]
    agreement = f"{len(backing)} of {len(programs)} program(s) that ran printed this answer."
    if len(top.members) > len(backing):
        agreement += " A direct answer agreed."
    message = FINAL_MESSAGE.format(
        explanation=explanation(chosen["reply"]),
        code=chosen["code"].rstrip(),
        printed=chosen["printed"],
        agreement=agreement,
        answer=printed_answer(chosen["printed"]) or chosen["printed"],
    )
    return {"answers": [text_answer(message)], "notes": [note]}


def explanation(reply: str) -> str:
    """The words of a program's reply: its prose without the code, and without any answer line of
    its own (the model's guess before the program ran is not the answer)."""
    lines = [line for line in without_code(reply).splitlines() if not _ANSWER_LINE.search(line)]
    return "\n".join(lines).strip() or "The answer is computed by this program."


def build() -> StateGraph:
    graph = StateGraph(PalState, context_schema=RunContext)
    graph.add_node("write", write)
    graph.add_node("run", run)
    graph.add_node("repair", repair)
    graph.add_node("prose", prose)
    graph.add_node("finish", finish)
    graph.add_edge(START, "write")
    graph.add_edge("write", "run")
    graph.add_conditional_edges("run", after_run, ["repair", "write", "prose", "finish"])
    graph.add_edge("repair", "run")
    graph.add_edge("prose", "finish")
    graph.add_edge("finish", END)
    return graph


WRITE_CALLS = formula(CALLS, "samples")
SPEC = ApproachSpec(
    name="pal",
    description="Program-aided: the model writes programs that print the answer, the sandbox runs them "
    "(failing ones are repaired), their printed answers are voted adaptively, with prose answers when "
    "they disagree; the answer comes with its program.",
    build=build,
    params=PalParams,
    papers=("arXiv:2211.10435", "arXiv:2211.12588", "arXiv:2305.11860"),
    calls=f"{WRITE_CALLS} + samples * max_repairs + min(prose_samples, 1)",
    rounds=f"({WRITE_CALLS}) * (1 + max_repairs) + min(prose_samples, 1)",
    expected_calls=formula(EXPECTED_CALLS, "samples"),
    streams_final=False,
)
