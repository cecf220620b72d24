"""`leap`: "In-Context Principle Learning from Mistakes" (Zhang et al., 2024, arXiv 2402.05403).
Few-shot examples show what right answers look like; LEAP also learns from wrong ones. The model
answers the examples' questions itself, its answers are checked against the given ones, it states
the principles that would have avoided each mistake, those are condensed, and the real question is
answered with the principles in view.

1) Find the examples: question/answer pairs in earlier conversation turns, or written in the user
message as `Q:`/`A:` (`Question:`/`Answer:`, `Input:`/`Output:`) blocks ending with an unanswered
question, found without an LLM; otherwise the model extracts them (JSON), at most `max_examples`.
2) Per example, concurrently, the model answers the question alone (`samples_per_example`
completions at `attempt_temperature`, to surface mistakes as the paper does). 3) An attempt whose
extracted final answer equals the given one is correct; any other is shown, with the given answer,
to the model, which states low-level principles from the mistake (or NONE when the attempt was in
fact equivalent), concurrently per example. 4) One call condenses them into at most
`max_principles` high-level principles. 5) The conversation is answered with the principles added
to its system instructions; that call streams. With no examples there is nothing to learn from:
one call states principles for the question itself, then it is answered with them.

Robustness: failed attempts or reflections are skipped (noted); unparsable principles become none;
a failed condensation falls back to the low-level principles themselves; the answer is still given
when every learning step failed.

Graph: START -> find_examples -> attempt x k -> learn x k -> condense -> answer -> END, or
START -> find_examples -> principles_for_question -> answer -> END.
Cost (k examples): 2k + 3 calls on the full path (LLM extraction, k attempts, k reflections,
condensation, answer), 2k + 2 when the examples are found without the model, 3 without examples
(2 with `extract_with_llm` off); 5 dependent rounds.
"""

from __future__ import annotations

import json
import operator
import re
from typing import Annotated, Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Send
from pydantic import Field

from optigraph.core.answers import (
    extract_normalized,
    normalize_answer,
    strip_think,
    tag_content,
)
from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, message_text, replace_last_user
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.core.state import ApproachState
from optigraph.errors import UpstreamError
from optigraph.nodes.common import (
    answer_of,
    branch_payload,
    generation_params,
    helper_params,
)
from optigraph.nodes.generate import generate_final
from optigraph.nodes.plan import numbered, parse_list
from optigraph.nodes.transform import with_system_instructions

EXTRACT_PROMPT = """Here is a prompt:

<prompt>
{query}
</prompt>

Does it contain worked examples, that is questions (or inputs) shown together with their answers \
(or outputs), before the question actually being asked? Extract every such example as a JSON list \
of objects with the keys "question" and "answer", copying the text exactly. Do not include the \
question actually being asked. Write the JSON inside <output></output> tags; if there are no worked \
examples, write <output>[]</output>."""

ATTEMPT_PROMPT = """{question}

Solve this step by step. End with one line of the form "Final answer: <answer>"."""

LEARN_PROMPT = """Question:
{question}

Your answer:
{attempts}

Correct answer:
{answer}

Compare your answer with the correct answer. If your answer in fact reaches the same result, reply \
with NONE only. Otherwise, say briefly what went wrong, then write "Principles:" followed by a \
numbered list of specific, actionable principles that would have avoided this mistake on questions \
like this one."""

CONDENSE_PROMPT = """Here are principles learned from mistakes made on example questions:

{principles}

Condense them into at most {count} general principles for solving such questions: merge duplicates, \
drop ones that only fit a single example, and keep each one short and actionable. Write them as a \
numbered list, and nothing else."""

QUESTION_PRINCIPLES_PROMPT = """Here is a question:

{query}

Before it is answered, write at most {count} principles for answering questions like this one \
correctly: common mistakes to avoid and checks to make. Do not answer the question. Write them as \
a numbered list, and nothing else."""

PRINCIPLES_INSTRUCTIONS = """Principles learned from mistakes on similar questions; apply them in \
your answer:
{principles}"""

ATTEMPT_SEPARATOR = "\n\n--- another attempt ---\n\n"
DEFAULT_ATTEMPT_TEMPERATURE = 0.7
DEFAULT_HELPER_TEMPERATURE = 0.3
DEFAULT_HELPER_MAX_TOKENS = 1024

_Q_LABEL = r"Q|Question|Input|Problem"
_A_LABEL = r"A|Answer|Output|Solution"
_LABEL = re.compile(
    rf"^[ \t]*(?:\*\*)?(?:(?P<q>{_Q_LABEL})|(?P<a>{_A_LABEL}))(?:\*\*)?[ \t]*\d*[ \t]*:(?:\*\*)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
_PRINCIPLES_HEADER = re.compile(r"^\W*principles?\W*:?\W*$|^\W*principles?\s*:", re.IGNORECASE | re.MULTILINE)
_NONE_REPLY = re.compile(r"^\W*none\W*$", re.IGNORECASE)


class LeapParams(ApproachParams):
    max_examples: int = Field(4, ge=1, le=16, description="Examples to learn from, at most.")
    samples_per_example: int = Field(1, ge=1, le=8, description="Attempts per example, sampled in one call.")
    max_principles: int = Field(8, ge=1, le=32, description="Principles kept after condensing.")
    attempt_temperature: float = Field(
        DEFAULT_ATTEMPT_TEMPERATURE,
        ge=0.0,
        le=2.0,
        description="Temperature of the model's own answers to the examples.",
    )
    helper_temperature: float = Field(
        DEFAULT_HELPER_TEMPERATURE,
        ge=0.0,
        le=2.0,
        description="Temperature of extraction, reflection and condensation.",
    )
    helper_max_tokens: int = Field(
        DEFAULT_HELPER_MAX_TOKENS,
        ge=1,
        le=32768,
        description="Longest reply of extraction, reflection and condensation.",
    )
    extract_with_llm: bool = Field(True, description="Ask the model for the examples when none are found without it.")


class LeapState(ApproachState, total=False):
    examples: list[dict[str, str]]  # question, answer, source ("turns" | "message" | "model")
    attempts: Annotated[list[dict[str, Any]], operator.add]  # index, answers, mistakes
    lessons: Annotated[list[dict[str, Any]], operator.add]  # index, principles (low-level)
    principles: list[str]  # what the answer is given


# ---- finding examples ---------------------------------------------------------------------------


def examples_from_turns(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """User/assistant pairs before the last user turn (assistant turns with tool calls excepted)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    out = []
    for i in range(last - 1):
        user, reply = messages[i], messages[i + 1]
        if user.get("role") == "user" and reply.get("role") == "assistant" and not reply.get("tool_calls"):
            question, answer = message_text(user).strip(), message_text(reply).strip()
            if question and answer:
                out.append({"question": question, "answer": answer, "source": "turns"})
    return out


def examples_from_text(text: str) -> list[dict[str, str]]:
    """`Q: ... A: ...` pairs written in one message, when they are followed by an unanswered
    question (the few-shot layout); otherwise none, so a specification that merely mentions
    "Input:" and "Output:" is not taken for examples."""
    labels = list(_LABEL.finditer(text))
    parts = [
        (
            "q" if m.group("q") else "a",
            text[m.end() : labels[k + 1].start() if k + 1 < len(labels) else len(text)].strip(),
        )
        for k, m in enumerate(labels)
    ]
    pairs: list[dict[str, str]] = []
    k = 0
    while k < len(parts) - 1:
        (kind, question), (next_kind, answer) = parts[k], parts[k + 1]
        if kind == "q" and next_kind == "a" and question and answer:
            pairs.append({"question": question, "answer": answer, "source": "message"})
            k += 2
        else:
            k += 1
    final_question = bool(parts) and (
        (parts[-1][0] == "q" and parts[-1][1] != "")
        or (len(parts) > 1 and parts[-1] == ("a", "") and parts[-2][0] == "q")
    )
    return pairs if final_question else []


def parse_examples(text: str) -> list[dict[str, str]]:
    """Examples from the model's JSON reply (inside <output>, a code fence, or bare); [] if unreadable."""
    body = tag_content(strip_think(text), "output")
    body = strip_think(text) if body is None else body
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end <= start:
        return []
    try:
        data = json.loads(body[start : end + 1])
    except ValueError:
        return []
    out = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        question = item.get("question", item.get("input", item.get("q")))
        answer = item.get("answer", item.get("output", item.get("a")))
        if isinstance(question, (str, int, float)) and isinstance(answer, (str, int, float)):
            question, answer = str(question).strip(), str(answer).strip()
            if question and answer:
                out.append({"question": question, "answer": answer, "source": "model"})
    return out


def _helper_call(state: ApproachState) -> dict[str, Any]:
    params = state.get("params") or {}
    return helper_params(
        state,
        temperature=params.get("helper_temperature", DEFAULT_HELPER_TEMPERATURE),
        max_tokens=params.get("helper_max_tokens", DEFAULT_HELPER_MAX_TOKENS),
    )


async def find_examples(state: LeapState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Examples from the conversation without an LLM; else, if allowed, from the model."""
    params = state.get("params") or {}
    limit = int(params["max_examples"])
    messages = state["messages"]
    found = examples_from_turns(messages) + examples_from_text(last_user_text(messages))
    if found or not params.get("extract_with_llm", True):
        return {"examples": found[:limit]}
    prompt = EXTRACT_PROMPT.format(query=last_user_text(messages))
    try:
        completion = await runtime.context.llm.chat(
            replace_last_user(messages, prompt), node="find_examples", **_helper_call(state)
        )
    except UpstreamError as exc:
        return {"examples": [], "notes": [f"find_examples: extraction failed: {exc.message}"]}
    found = parse_examples(completion.text)
    notes = [] if found else ["find_examples: no examples; learning principles from the question itself"]
    return {"examples": found[:limit], "usage": completion.usage, "notes": notes}


# ---- learning from mistakes -----------------------------------------------------------------------


def _payload(state: ApproachState, **branch: Any) -> dict[str, Any]:
    return branch_payload(state, branch)


def route_examples(state: LeapState) -> list[Send] | str:
    examples = state.get("examples") or []
    if not examples:
        return "principles_for_question"
    return [Send("attempt", _payload(state, index=i, example=e)) for i, e in enumerate(examples)]


def same_answer(attempt: str, given: str) -> bool:
    """Whether an attempt reaches the given answer: their extracted final answers, normalised."""
    mine = extract_normalized(attempt)
    theirs = extract_normalized(given)
    if theirs is None:
        theirs = normalize_answer(strip_think(given))
    return mine is not None and mine == theirs


async def attempt(state: ApproachState, runtime: Runtime[RunContext]) -> Command:
    """The model answers one example's question alone; wrong attempts go on to `learn`."""
    branch = state["branch"]
    example, index = branch["example"], branch["index"]
    params = state.get("params") or {}
    system = [m for m in state["messages"] if m.get("role") in ("system", "developer")]
    messages = [*system, {"role": "user", "content": ATTEMPT_PROMPT.format(question=example["question"])}]
    n = int(params.get("samples_per_example", 1))
    update: dict[str, Any] = {}
    mistakes: list[str] = []
    try:
        completion = await runtime.context.llm.chat(
            messages,
            node="attempt",
            n=n,
            partial=True,
            **helper_params(state, temperature=params.get("attempt_temperature", DEFAULT_ATTEMPT_TEMPERATURE)),
        )
    except UpstreamError as exc:
        update["notes"] = [f"attempt: example {index} failed: {exc.message}"]
    else:
        answers = [strip_think(t) for t in completion.texts if strip_think(t)]
        mistakes = list(dict.fromkeys(a for a in answers if not same_answer(a, example["answer"])))
        update = {"usage": completion.usage, "attempts": [{"index": index, "answers": answers, "mistakes": mistakes}]}
        if not answers:
            update["notes"] = [f"attempt: example {index} came back empty"]
    return Command(update=update, goto=Send("learn", _payload(state, **branch, mistakes=mistakes)))


def learned_principles(text: str, limit: int) -> list[str]:
    """Principles from a reflection: the list after "Principles:" (else the whole reply's list);
    none when the reply is NONE."""
    body = strip_think(text)
    if _NONE_REPLY.match(body):
        return []
    header = list(_PRINCIPLES_HEADER.finditer(body))
    if header:
        body = body[header[-1].start() :]
        body = re.sub(r"^\W*principles?[*_ \t]*:?[*_ \t]*", "", body, count=1, flags=re.IGNORECASE)
    return parse_list(body, limit=limit)


async def learn(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Low-level principles from one example's mistakes (no call when there were none)."""
    branch = state["branch"]
    mistakes: list[str] = branch.get("mistakes") or []
    if not mistakes:
        return {}
    example, index = branch["example"], branch["index"]
    params = state.get("params") or {}
    prompt = LEARN_PROMPT.format(
        question=example["question"], attempts=ATTEMPT_SEPARATOR.join(mistakes), answer=example["answer"]
    )
    system = [m for m in state["messages"] if m.get("role") in ("system", "developer")]
    try:
        completion = await runtime.context.llm.chat(
            [*system, {"role": "user", "content": prompt}], node="learn", **_helper_call(state)
        )
    except UpstreamError as exc:
        return {"notes": [f"learn: example {index} failed: {exc.message}"]}
    principles = learned_principles(completion.text, int(params["max_principles"]))
    return {"lessons": [{"index": index, "principles": principles}], "usage": completion.usage}


async def condense(state: LeapState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """High-level principles from all the low-level ones (no call when there are none)."""
    limit = int((state.get("params") or {})["max_principles"])
    lessons = sorted(state.get("lessons") or [], key=lambda lesson: lesson["index"])
    low = list(dict.fromkeys(p for lesson in lessons for p in lesson["principles"]))
    if not low:
        return {"principles": [], "notes": ["condense: no mistakes to learn from"]}
    prompt = CONDENSE_PROMPT.format(principles=numbered(low), count=limit)
    try:
        completion = await runtime.context.llm.chat(
            replace_last_user(state["messages"], prompt), node="condense", **_helper_call(state)
        )
    except UpstreamError as exc:
        return {
            "principles": low[:limit],
            "notes": [f"condense: failed, using the principles as learned: {exc.message}"],
        }
    principles = parse_list(completion.text, limit=limit)
    notes = [] if principles else ["condense: no principles in the reply, using them as learned"]
    return {"principles": principles or low[:limit], "usage": completion.usage, "notes": notes}


async def principles_for_question(state: LeapState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Without examples: principles for the question itself."""
    limit = int((state.get("params") or {})["max_principles"])
    prompt = QUESTION_PRINCIPLES_PROMPT.format(query=last_user_text(state["messages"]), count=limit)
    try:
        completion = await runtime.context.llm.chat(
            replace_last_user(state["messages"], prompt), node="principles_for_question", **_helper_call(state)
        )
    except UpstreamError as exc:
        return {"principles": [], "notes": [f"principles_for_question: failed: {exc.message}"]}
    return {"principles": parse_list(completion.text, limit=limit), "usage": completion.usage}


def answer_messages(messages: list[dict[str, Any]], principles: list[str]) -> list[dict[str, Any]]:
    if not principles:
        return messages
    return with_system_instructions(messages, PRINCIPLES_INSTRUCTIONS.format(principles=numbered(principles)))


async def answer(state: LeapState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The conversation answered with the principles in its system instructions (streamed)."""
    messages = answer_messages(state["messages"], state.get("principles") or [])
    completion = await generate_final(state, runtime, messages, node="answer", **generation_params(state))
    return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}


def build() -> StateGraph:
    graph = StateGraph(LeapState, context_schema=RunContext)
    graph.add_node("find_examples", find_examples)
    graph.add_node("attempt", attempt, destinations=("learn",))
    graph.add_node("learn", learn)
    graph.add_node("condense", condense)
    graph.add_node("principles_for_question", principles_for_question)
    graph.add_node("answer", answer)
    graph.add_edge(START, "find_examples")
    graph.add_conditional_edges("find_examples", route_examples, ["attempt", "principles_for_question"])
    graph.add_edge("learn", "condense")
    graph.add_edge("condense", "answer")
    graph.add_edge("principles_for_question", "answer")
    graph.add_edge("answer", END)
    return graph


SPEC = ApproachSpec(
    name="leap",
    description="LEAP: answers the prompt's few-shot examples, learns principles from the mistakes, answers with them.",
    build=build,
    params=LeapParams,
    papers=("arXiv:2402.05403",),
    calls="2 * max_examples + 3",
    rounds="5",
    streams_final=True,
)
