"""`memory`: unbounded context for any model, and conversation memory kept in the database.

Long inputs: when the conversation is estimated (characters / 4) at more than `max_context_tokens`,
`pre` cuts every long turn (over `chunk_tokens`: a long document in a system turn, a long user
turn, a long tool result) into overlapping chunks, ranks all of them against the question with
BM25 (optigraph/plugins/retrieval.py), and keeps the best ones: at most `top_k`, no more than fit
in the limit, and only chunks that share a term with the question (unless none does). They are
kept in their original order, with a note of how many were kept, and the parts of the text that
were left out are marked `[...]`. Short turns are kept as they are, every turn keeps its role and
other fields, images and other non-text parts stay where they were, and the question stays last.
The question is the last user turn; when that turn is itself long (a document with the question in
it), its first line and its last line (or its last `chunk_tokens`) are kept word for word and
searched with, and the rest of it is chunked like any long turn. Works for inputs many times the
model's context: only the ranking grows with the input (it runs off the event loop).

Conversation memory: with `optillm_params: {"memory": {"conversation": "<id>"}}`, `post` stores the
exchange (the question as the client sent it and the first answer, cut into chunks) under that id
in the server's database (table `memory_chunks`; SQLite or PostgreSQL), and `pre` of a later request
with the same id retrieves the stored chunks that share terms with the question (at most
`recall_k`, BM25 again, skipping what the conversation the client sent already contains) and adds
them, oldest first, as a system turn after the conversation's leading system turns. Ids are the
client's choice and are not secrets: anyone who can call the server with an id reads what it
stored; a conversation is scoped by tenant once the server knows tenants. Without the parameter
nothing is stored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from langgraph.runtime import Runtime
from pydantic import Field, model_validator

from optigraph.core.context import RunContext
from optigraph.core.messages import message_text, with_text
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import PluginState
from optigraph.errors import InvalidRequest
from optigraph.memory.conversations import StoredChunk
from optigraph.plugins.retrieval import BM25, Chunk, estimate_tokens, split_chunks

NOTE_TOKENS = 40  # what the note and the `[...]` marks of one reduced turn are allowed for
MEMORY_HEADER = "Earlier in this conversation (retrieved from memory, oldest first):"


class MemoryParams(ApproachParams):
    max_context_tokens: int = Field(
        2000,
        ge=200,
        le=10_000_000,
        description="Estimated tokens (characters / 4) the conversation may take; above it, long turns are "
        "reduced to their chunks most relevant to the question. Set it to the model's context "
        "less room for the answer.",
    )
    chunk_tokens: int = Field(
        200, ge=20, le=20_000, description="Estimated tokens per chunk; longer turns are chunked."
    )
    overlap_tokens: int = Field(
        40, ge=0, le=10_000, description="Estimated tokens each chunk repeats of the one before."
    )
    top_k: int = Field(
        8, ge=1, le=1000, description="Most chunks kept from long turns (fewer if the limit is reached)."
    )
    conversation: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Conversation id: the exchange is stored under it and later requests with it retrieve it.",
    )
    recall_k: int = Field(4, ge=0, le=100, description="Most stored chunks of the conversation added to a request.")

    @model_validator(mode="after")
    def _sizes(self) -> MemoryParams:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError("overlap_tokens must be smaller than chunk_tokens")
        if self.chunk_tokens * 2 > self.max_context_tokens:
            raise ValueError("max_context_tokens must hold at least two chunks (chunk_tokens * 2)")
        return self


@dataclass
class _Long:
    """A turn being reduced: the kept start and end of its text and the chunks of the rest."""

    index: int
    text: str
    lead_end: int  # text[:lead_end] is kept word for word
    tail_start: int  # text[tail_start:] is kept word for word
    chunks: list[Chunk]


def _question_index(messages: list[dict[str, Any]]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return len(messages) - 1 if messages else None


def _ends(text: str, cap: int) -> tuple[int, int]:
    """Where the kept first line ends and the kept last line starts, in a long question turn: a line
    within `cap` characters of its end, else no first line and the last `cap` characters (from a
    word's start) as the last."""
    body = text.rstrip()
    first = body.find("\n")
    lead_end = first if 0 < first <= cap else 0
    last = body.rfind("\n")
    if last >= 0 and len(body) - last - 1 <= cap:
        tail_start = last + 1
    else:
        tail_start = len(body) - cap
        while 0 < tail_start < len(body) and not body[tail_start - 1].isspace():
            tail_start += 1
    return lead_end, max(tail_start, lead_end)


def _render(item: _Long, kept: list[int]) -> str:
    """The reduced text: the note, the kept first line, the kept chunks in order (overlapping or
    adjacent ones joined, gaps marked [...]), and the kept last line."""
    text, chunks = item.text, item.chunks
    spans: list[list[int]] = []
    previous = -2
    for i in sorted(kept):
        if i == previous + 1:  # the next chunk: only whitespace, or the overlap, lies between them
            spans[-1][1] = chunks[i].end
        else:
            spans.append([chunks[i].start, chunks[i].end])
        previous = i
    note = (
        f"[memory: {len(kept)} of {len(chunks)} parts of this text were kept, the ones most relevant to "
        f"the question, in their original order; [...] marks what was left out]"
    )
    body: list[str] = []
    if spans and spans[0][0] > chunks[0].start:
        body.append("[...]")
    for n, (start, end) in enumerate(spans):
        if n:
            body.append("[...]")
        body.append(text[start:end])
    if not spans or spans[-1][1] < chunks[-1].end:
        body.append("[...]")
    lead, tail = text[: item.lead_end].strip(), text[item.tail_start :].strip()
    return "\n\n".join(p for p in (note, lead, *body, tail) if p)


def fit(messages: list[dict[str, Any]], budget: int, params: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The conversation reduced to about `budget` estimated tokens (module docstring), and notes."""
    texts = [message_text(m) for m in messages]
    total = sum(estimate_tokens(t) for t in texts)
    if total <= budget:
        return messages, []
    chunk_tokens, overlap = int(params["chunk_tokens"]), int(params["overlap_tokens"])
    question_at = _question_index(messages)
    cap = chunk_tokens * 4
    longs: list[_Long] = []
    query = texts[question_at] if question_at is not None else ""
    for i, text in enumerate(texts):
        if estimate_tokens(text) <= chunk_tokens:
            continue
        lead_end, tail_start = _ends(text, cap) if i == question_at else (0, len(text))
        middle = text[lead_end:tail_start]
        chunks = [
            Chunk(c.start + lead_end, c.end + lead_end, c.text)
            for c in split_chunks(middle, chunk_tokens=chunk_tokens, overlap_tokens=overlap)
        ]
        if i == question_at:
            query = text[:lead_end] + "\n" + text[tail_start:]
        if chunks:
            longs.append(_Long(i, text, lead_end, tail_start, chunks))
    if not longs:
        return messages, [
            (
                f"memory: {total} estimated tokens, over the limit of {budget}, but no turn is long "
                f"enough to reduce (each is under {chunk_tokens} tokens)"
            )
        ]
    pool = [(n, k) for n, item in enumerate(longs) for k in range(len(item.chunks))]
    scores = BM25([longs[n].chunks[k].text for n, k in pool]).scores(query)
    ranking = sorted(range(len(pool)), key=lambda p: (-scores[p], p))
    if scores[ranking[0]] > 0.0:  # chunks that share no term with the question are only kept when none does
        ranking = [p for p in ranking if scores[p] > 0.0]
    reduced = {item.index for item in longs}
    fixed = sum(estimate_tokens(t) for i, t in enumerate(texts) if i not in reduced)
    fixed += sum(
        estimate_tokens(it.text[: it.lead_end]) + estimate_tokens(it.text[it.tail_start :]) + NOTE_TOKENS
        for it in longs
    )
    room = budget - fixed
    kept: dict[int, list[int]] = {n: [] for n in range(len(longs))}
    used = count = 0
    for p in ranking:
        if count >= int(params["top_k"]):
            break
        n, k = pool[p]
        size = estimate_tokens(longs[n].chunks[k].text)
        if count and used + size > room:
            continue  # the best chunk is always kept; others only where they fit
        kept[n].append(k)
        used += size
        count += 1
    out = list(messages)
    for n, item in enumerate(longs):
        out[item.index] = with_text(messages[item.index], _render(item, kept[n]))
    after = sum(estimate_tokens(message_text(m)) for m in out)
    notes = [
        (
            f"memory: {total} estimated tokens over the limit of {budget}: kept {count} of {len(pool)} chunks "
            f"of {len(longs)} long turn(s); now {after}"
        )
    ]
    if after > budget:
        notes.append(f"memory: still over the limit: the turns kept whole take {fixed} estimated tokens")
    return out, notes


def recall(stored: list[StoredChunk], messages: list[dict[str, Any]], question: str, k: int) -> list[StoredChunk]:
    """At most `k` stored chunks that share terms with the question, in the order they were stored,
    leaving out those the conversation already contains word for word."""
    if not stored or k <= 0:
        return []
    present = "\n".join(message_text(m) for m in messages)
    scores = BM25([c.text for c in stored]).scores(question)
    ranked = sorted(range(len(stored)), key=lambda i: (-scores[i], i))
    picked: list[int] = []
    for i in ranked:
        if len(picked) >= k or scores[i] <= 0.0:
            break
        if stored[i].text not in present:
            picked.append(i)
    return [stored[i] for i in sorted(picked)]


def _with_memory(messages: list[dict[str, Any]], recalled: list[StoredChunk]) -> list[dict[str, Any]]:
    lines = [MEMORY_HEADER, *(f"[{c.role}] {c.text}" for c in recalled)]
    at = 0
    while at < len(messages) - 1 and messages[at].get("role") in ("system", "developer"):
        at += 1
    return [*messages[:at], {"role": "system", "content": "\n".join(lines)}, *messages[at:]]


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    params = state.get("params") or MemoryParams().model_dump()
    messages = state["messages"]
    at = _question_index(messages)
    question = message_text(messages[at]) if at is not None else ""
    notes: list[str] = []
    private: dict[str, Any] = {}
    recalled: list[StoredChunk] = []
    conversation = params.get("conversation")
    if conversation:
        store = _store(runtime)
        private = {"conversation": conversation, "question": question}
        stored = await store.recall(conversation, tenant=runtime.context.tenant)
        query = (
            question if estimate_tokens(question) <= params["chunk_tokens"] else question[-params["chunk_tokens"] * 4 :]
        )
        recalled = await asyncio.to_thread(recall, stored, messages, query, int(params["recall_k"]))
        notes.append(f"memory: recalled {len(recalled)} of {len(stored)} stored chunks of the conversation")
    memory_tokens = estimate_tokens("\n".join([MEMORY_HEADER, *(c.text for c in recalled)])) if recalled else 0
    budget = max(int(params["max_context_tokens"]) - memory_tokens, int(params["chunk_tokens"]))
    messages, fit_notes = await asyncio.to_thread(fit, messages, budget, params)
    notes += fit_notes
    if recalled:
        messages = _with_memory(messages, recalled)
    return {"messages": messages, "private": private, "notes": notes}


async def post(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    answers = state.get("answers") or []
    private = state.get("private") or {}
    conversation = private.get("conversation")
    if conversation and answers:
        params = state.get("params") or {}
        size = {
            "chunk_tokens": int(params.get("chunk_tokens", 200)),
            "overlap_tokens": int(params.get("overlap_tokens", 40)),
        }
        said = [("user", private.get("question") or ""), ("assistant", message_text(answers[0].get("message") or {}))]
        chunks = [(role, c.text) for role, text in said for c in split_chunks(text, **size)]
        await _store(runtime).remember(conversation, runtime.context.run_id, chunks, tenant=runtime.context.tenant)
    return {"answers": answers}


def _store(runtime: Runtime[RunContext]) -> Any:
    store = runtime.context.store
    if store is None:
        raise InvalidRequest(
            "conversation memory needs the server's database, which this run has none of",
            param="optillm_params.memory.conversation",
            code="approach_unsupported",
        )
    return store


class _Unchanged:
    """The stream rewriter of `memory`: the text streams as it is (post only stores it)."""

    def feed(self, text: str) -> str:
        return text

    def flush(self) -> str:
        return ""


def stream(request: dict[str, Any], private: dict[str, Any], context: RunContext) -> _Unchanged:
    return _Unchanged()


SPEC = PluginSpec(
    name="memory",
    description="Unbounded context: long turns are cut into chunks and only those relevant to the question are "
    "kept (BM25); with a conversation id, earlier exchanges are stored and recalled from the database.",
    pre=pre,
    post=post,
    params=MemoryParams,
    needs=frozenset({"store"}),
    stream=stream,
)
