"""`longcepo`: long-context planning (after OptILLM's LongCePO): answers from inputs many times the
model's context window, which no single call ever exceeds.

When the conversation is estimated (characters / 4) at more than `window_tokens` less room for an
answer, `pre`:

1. **plans** (one call): from the question alone, up to `questions` short questions whose answers,
   found somewhere in the document, answer it;
2. **maps**: cuts everything but the question into chunks that fit the window with the map prompt
   (`overlap_tokens` repeated between neighbours), and asks, for every chunk, what it says about
   the question and the plan, `concurrency` calls at a time; a chunk with nothing relevant answers
   `NOTHING` and is dropped;
3. **reduces**: while the notes do not fit the room left for them, consecutive notes are merged in
   groups that fit one call (each merge joins at least two notes into one; a level runs with the
   same concurrency), level after level;
4. replaces the conversation with the notes (in document order) and the question, which the wrapped
   approach answers (`longcepo` alone: the server's default approach).

An input that already fits is passed on unchanged (no call). A document that would need more than
`max_chunks` chunks, or a question that alone fills a quarter of the window, is a 400. Every call is
sent with `max_tokens = answer_tokens`.

Cost: 1 plan call, one map call per chunk (c <= `max_chunks`), at most c - 1 merge calls: at most
2 * max_chunks calls, in at most 1 + ceil(c / concurrency) + (c - 1) dependent rounds. Where a run
stands is in its notes (chunks, relevant chunks, merges).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.runtime import Runtime
from pydantic import Field, model_validator

from optigraph.core.context import RunContext
from optigraph.core.messages import message_text
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import PluginState
from optigraph.core.usage import Usage, add_usage, empty_usage
from optigraph.errors import InvalidRequest
from optigraph.plugins.retrieval import CHARS_PER_TOKEN, estimate_tokens, split_chunks

NOTHING = "NOTHING"
MARGIN_TOKENS = 16  # the estimate is rough: every prompt keeps this much of the window free besides

PLAN_PROMPT = """You will answer a question about a long document that you cannot read in one go; \
it will be read part by part. Write up to {questions} short questions, one per line, whose answers, \
found in parts of the document, together answer the question. Write only the questions.

Question: {question}"""

MAP_PROMPT = """This is part {number} of {total} of a long document.

{chunk}

(End of part {number}.)

Question: {question}
What to look for:
{plan}

Write down, briefly, what this part says that helps answer the question or what to look for; quote \
names, numbers and facts exactly. If this part says nothing relevant, answer exactly {nothing}."""

REDUCE_PROMPT = """These notes were taken from consecutive parts of a long document, to answer a \
question. Merge them into one set of notes: keep every fact that helps answer the question (names, \
numbers and facts exactly as written), drop repetitions and what does not help.

Question: {question}

{notes}"""

ANSWER_PROMPT = """Notes taken from a long document (too long to show whole), part by part, in \
document order:

{notes}

Using these notes, answer: {question}"""


class LongCePOParams(ApproachParams):
    window_tokens: int = Field(
        8000,
        ge=256,
        le=10_000_000,
        description="The model's context window in estimated tokens (characters / 4): every call fits in it, "
        "its answer (answer_tokens) included.",
    )
    answer_tokens: int = Field(
        512, ge=16, le=100_000, description="Room kept in the window for each call's answer (sent as max_tokens)."
    )
    questions: int = Field(3, ge=1, le=10, description="Questions the plan may list.")
    concurrency: int = Field(4, ge=1, le=64, description="Map and merge calls in flight at once.")
    max_chunks: int = Field(
        64, ge=1, le=4096, description="Most chunks a document may be cut into; a longer one is refused (400)."
    )
    overlap_tokens: int = Field(
        32, ge=0, le=10_000, description="Estimated tokens each chunk repeats of the one before."
    )

    @model_validator(mode="after")
    def _sizes(self) -> LongCePOParams:
        if self.answer_tokens * 4 > self.window_tokens:
            raise ValueError("answer_tokens must be at most a quarter of window_tokens")
        return self


def _split(messages: list[dict[str, Any]], window: int) -> tuple[str, str]:
    """The question (the last user turn, or its last paragraph when that turn is long) and the
    document (every other turn's text, in order, with its role)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
    question = message_text(messages[last]) if messages else ""
    parts = [f"[{m.get('role')}]\n{message_text(m)}" for i, m in enumerate(messages) if i != last]
    if estimate_tokens(question) > window // 4:  # a document with the question in it: the question is its end
        body = question.rstrip()
        cut = body.rfind("\n\n")
        cut = cut if cut >= 0 else body.rfind("\n")
        if cut > 0 and estimate_tokens(body[cut:]) <= window // 4:
            parts.append(body[:cut])
            question = body[cut:].strip()
    return question, "\n\n".join(p for p in parts if p.strip())


def _groups(notes: list[str], room: int) -> list[list[str]]:
    """Consecutive notes in groups whose estimated size fits `room` tokens."""
    groups: list[list[str]] = []
    size = 0
    for note in notes:
        tokens = estimate_tokens(note) + 2
        if groups and size + tokens <= room:
            groups[-1].append(note)
            size += tokens
        else:
            groups.append([note])
            size = tokens
    return groups


def _numbered(notes: list[str]) -> str:
    return "\n\n".join(f"Notes {i}:\n{note}" for i, note in enumerate(notes, 1))


async def _bounded(limit: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """The jobs' results in order, at most `limit` running at once."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    p = LongCePOParams.model_validate(state.get("params") or {})
    messages = state["messages"]
    total = sum(estimate_tokens(message_text(m)) + 4 for m in messages)
    if total <= p.window_tokens - p.answer_tokens:
        return {"notes": [f"longcepo: the conversation fits the window ({total} of {p.window_tokens} tokens)"]}
    question, document = _split(messages, p.window_tokens)
    if estimate_tokens(question) > p.window_tokens // 4:
        raise InvalidRequest(
            f"longcepo: the question alone takes {estimate_tokens(question)} estimated tokens, over a quarter of "
            f"window_tokens ({p.window_tokens})",
            param="messages",
            code="context_length_exceeded",
        )
    fixed = estimate_tokens(
        MAP_PROMPT.format(
            number=p.max_chunks, total=p.max_chunks, chunk="", question=question, plan="", nothing=NOTHING
        )
    )
    # The plan is at most answer_tokens long (it is cut there): the rest of the window is the chunk's.
    chunk_tokens = p.window_tokens - p.answer_tokens - fixed - p.answer_tokens - MARGIN_TOKENS
    if chunk_tokens < 32 or chunk_tokens <= p.overlap_tokens:
        raise InvalidRequest(
            f"longcepo: window_tokens ({p.window_tokens}) leaves no room for a chunk besides the prompt, the plan and "
            f"the answer; raise it or lower answer_tokens",
            param="optillm_params.longcepo.window_tokens",
            code="invalid_approach_parameter",
        )
    chunks = split_chunks(document, chunk_tokens=chunk_tokens, overlap_tokens=p.overlap_tokens)
    if len(chunks) > p.max_chunks:
        raise InvalidRequest(
            f"longcepo: the document needs {len(chunks)} chunks of {chunk_tokens} tokens, over max_chunks "
            f"({p.max_chunks})",
            param="optillm_params.longcepo.max_chunks",
            code="context_length_exceeded",
        )
    llm = runtime.context.llm
    usage: Usage = empty_usage()

    async def call(prompt: str, node: str) -> str:
        nonlocal usage
        reply = await llm.chat([{"role": "user", "content": prompt}], node=node, max_tokens=p.answer_tokens)
        usage = add_usage(usage, reply.usage)
        return reply.text.strip()

    plan = await call(PLAN_PROMPT.format(questions=p.questions, question=question), "longcepo.plan")
    plan = plan[: p.answer_tokens * CHARS_PER_TOKEN]
    mapped = await _bounded(
        p.concurrency,
        [
            (
                lambda i=i, c=c: call(
                    MAP_PROMPT.format(
                        number=i, total=len(chunks), chunk=c.text, question=question, plan=plan, nothing=NOTHING
                    ),
                    "longcepo.map",
                )
            )
            for i, c in enumerate(chunks, 1)
        ],
    )
    notes = [n for n in mapped if n and n.strip(" .\"'").upper() != NOTHING]
    relevant = len(notes)
    notes, merged, levels = await _reduce(notes, question, p, call)
    answer_room = p.window_tokens - p.answer_tokens - estimate_tokens(ANSWER_PROMPT.format(notes="", question=question))
    text = _numbered(notes) if notes else "(no part of the document says anything relevant)"
    text = text[: max(answer_room - MARGIN_TOKENS, 0) * CHARS_PER_TOKEN]
    return {
        "messages": [{"role": "user", "content": ANSWER_PROMPT.format(notes=text, question=question)}],
        "usage": usage,
        "notes": [
            f"longcepo: {len(chunks)} chunks of up to {chunk_tokens} tokens, {relevant} with relevant notes, "
            f"{merged} merge calls in {levels} levels",
            f"longcepo: plan: {' | '.join(line.strip() for line in plan.splitlines() if line.strip())}",
        ],
    }


async def _reduce(
    notes: list[str], question: str, p: LongCePOParams, call: Callable[[str, str], Awaitable[str]]
) -> tuple[list[str], int, int]:
    """The notes merged until they fit the answer prompt, the merge calls made and the levels run."""
    room_final = (
        p.window_tokens - p.answer_tokens - estimate_tokens(ANSWER_PROMPT.format(notes="", question=question))
    ) - MARGIN_TOKENS
    room_merge = (
        p.window_tokens - p.answer_tokens - estimate_tokens(REDUCE_PROMPT.format(notes="", question=question))
    ) - MARGIN_TOKENS
    merged = levels = 0
    while notes and estimate_tokens(_numbered(notes)) > room_final:
        groups = _groups(notes, room_merge)
        if all(len(g) == 1 for g in groups):
            break  # every note alone fills a merge: the answer prompt cuts the rest
        jobs = [
            (lambda g=g: call(REDUCE_PROMPT.format(question=question, notes=_numbered(g)), "longcepo.reduce"))
            if len(g) > 1
            else (lambda g=g: _same(g[0]))
            for g in groups
        ]
        merged += sum(1 for g in groups if len(g) > 1)
        levels += 1
        notes = [n for n in await _bounded(p.concurrency, jobs) if n]
    return notes, merged, levels


async def _same(note: str) -> str:
    return note


SPEC = PluginSpec(
    name="longcepo",
    description="Long-context planning: plans questions, maps them over window-sized chunks of a long input "
    "concurrently, merges the notes and has the wrapped approach answer from them.",
    pre=pre,
    params=LongCePOParams,
    papers=(),
    calls="2 * max_chunks",
    rounds="1 + ceil(max_chunks / concurrency) + max_chunks - 1",
)
