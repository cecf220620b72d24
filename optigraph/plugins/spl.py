"""`spl`: system prompt learning: strategies per type of problem, chosen from a store and learned.

After Karpathy's "third paradigm" of LLM learning (learning from the system prompt rather than the
weights), as OptILLM's `spl` plugin does it, with the store in the server's database.

    spl.pre:  classify the problem (local classifier, plugins/problem_types.py: no upstream call)
              -> read the best strategies of that type -> add them to the system prompt
    spl.run:  what `spl` wraps answers
    spl.post: (learning only) reflect: one call that judges the answer and writes a strategy
              -> record the use (and success) of each applied strategy -> add the new strategy
              unless a similar one is stored -> refine one strategy every `refine_every` uses
              (one more call) -> prune the type to `max_per_type`

Inference-only (the default) never writes: it applies what is stored. Learning is turned on with
`optillm_params: {"spl": {"learning": true}}` (or OptILLM's `spl_learning: true` request field,
which is not forwarded upstream). A strategy's success is, with `reference` (the expected answer,
e.g. from an evaluation set), whether the answer's final answer equals it; otherwise the model's own
verdict in the reflection. A strategy is applied while it has fewer than `min_uses` uses or a
success rate of at least `min_success_rate`, best (smoothed success rate, then uses) first.

The problem type is decided by the local classifier rather than by a model call: it is free,
deterministic and the same one the `router` uses, and a small upstream model classifies problems
less reliably than it (the classifier's held-out accuracy is in docs/plugins.md).

Every decision is in the run's notes and in the `spl.pre` / `spl.post` checkpoints (`private`: type,
confidence, strategies applied; the post notes: ids recorded, created, refined, pruned).

Cost: no call at inference; with learning 1 (reflection) + 1 when a strategy is refined:
`learning * (1 + min(1, refine_every))` at most, in as many rounds.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from typing import Any

from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.answers import extract_normalized, normalize_answer
from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, message_text
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import PluginState
from optigraph.core.usage import add_usage, empty_usage
from optigraph.errors import InvalidRequest
from optigraph.memory.strategies import Strategy, StrategyStore
from optigraph.plugins.context_memory import stream as unchanged_stream
from optigraph.plugins.problem_types import load_classifier
from optigraph.plugins.retrieval import terms

OPTILLM_FIELD = "spl_learning"  # OptILLM's request field that turns learning on
REFLECT_TEMPERATURE = 0.3
REFINE_TEMPERATURE = 0.3
LEARNING_MAX_TOKENS = 200
QUESTION_CHARS = 2000  # what of the question and answer the learning prompts quote
ANSWER_CHARS = 2000

STRATEGY_HEADER = "Strategies that have worked for {type} problems (use those that apply, then answer as asked):"
REFLECT_PROMPT = """You are improving how an assistant solves {type} problems.

Problem:
{question}

The assistant's answer:
{answer}
{reference}{applied}
First judge the answer on a line `VERDICT: CORRECT` or `VERDICT: INCORRECT`.
Then write one general strategy for solving problems of this type (one or two sentences, not about \
these particular numbers or names), one that would lead to a correct answer, on a line starting \
with `STRATEGY:`."""
REFINE_PROMPT = """This strategy for {type} problems has helped in {successes} of {uses} uses:

{text}

The last problem it was used for:
{example}

Rewrite the strategy to be clearer and more useful for problems of this type (one to three \
sentences, general, no particular numbers). Answer with the strategy only, on a line starting with \
`STRATEGY:`."""

_VERDICT = re.compile(r"VERDICT\s*:\s*\**\s*(CORRECT|INCORRECT)", re.IGNORECASE)
_STRATEGY = re.compile(r"STRATEGY\s*:\s*\**\s*(.+?)(?:\n\s*\n|\Z)", re.IGNORECASE | re.DOTALL)


class SplParams(ApproachParams):
    learning: bool = Field(False, description="Learn from this request: rate, create and refine strategies.")
    reference: str | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="The expected answer (learning): success is whether the answer's final answer equals it; "
        "without it the model's own verdict decides.",
    )
    max_strategies: int = Field(3, ge=0, le=10, description="Most strategies added to the system prompt.")
    max_per_type: int = Field(10, ge=1, le=100, description="Most strategies kept per problem type (learning prunes).")
    min_uses: int = Field(5, ge=1, le=1000, description="Uses after which a strategy's success rate is trusted.")
    min_success_rate: float = Field(
        0.4, ge=0.0, le=1.0, description="A strategy used `min_uses` times is applied only at this rate or more."
    )
    refine_every: int = Field(
        5, ge=0, le=1000, description="A strategy is rewritten every this many uses (learning; 0: never)."
    )
    similarity: float = Field(
        0.7, gt=0.0, le=1.0, description="A new strategy this similar (word cosine) to a stored one is not added."
    )


def _store(runtime: Runtime[RunContext]) -> StrategyStore:
    store = runtime.context.store
    if store is None:
        raise InvalidRequest(
            "spl keeps its strategies in the server's database, which this run has none of",
            param="optillm_params.spl",
            code="approach_unsupported",
        )
    return StrategyStore(store.db)  # the strategies live on the same database as conversation memory


def usable(strategies: list[Strategy], params: dict[str, Any]) -> list[Strategy]:
    """The strategies to apply: those not yet trusted (fewer than `min_uses` uses) or good enough,
    best smoothed success rate first, then most used, then oldest; at most `max_strategies`."""
    keep = [
        s
        for s in strategies
        if s.uses < int(params["min_uses"]) or s.successes / s.uses >= float(params["min_success_rate"])
    ]
    keep.sort(key=lambda s: (-s.success_rate, -s.uses, s.id))
    return keep[: int(params["max_strategies"])]


def with_strategies(messages: list[dict[str, Any]], problem_type: str, chosen: list[Strategy]) -> list[dict[str, Any]]:
    """The conversation with the strategies appended to its first system turn (one is added first
    when it has none)."""
    lines = [STRATEGY_HEADER.format(type=problem_type.replace("_", " "))]
    lines += [f"{i}. {s.text}" for i, s in enumerate(chosen, 1)]
    block = "\n".join(lines)
    for i, m in enumerate(messages):
        if m.get("role") in ("system", "developer") and isinstance(m.get("content"), str):
            out = list(messages)
            out[i] = {**m, "content": f"{m['content']}\n\n{block}"}
            return out
    return [{"role": "system", "content": block}, *messages]


def similarity(a: str, b: str) -> float:
    """Cosine similarity of the two texts' word counts."""
    ca, cb = Counter(terms(a)), Counter(terms(b))
    dot = sum(v * cb[k] for k, v in ca.items())
    norm = math.sqrt(sum(v * v for v in ca.values())) * math.sqrt(sum(v * v for v in cb.values()))
    return dot / norm if norm else 0.0


def parse_reflection(text: str) -> tuple[bool | None, str | None]:
    """The verdict (None when it gives none) and the strategy (None when it writes none)."""
    verdicts = _VERDICT.findall(text)
    verdict = verdicts[-1].upper() == "CORRECT" if verdicts else None
    found = _STRATEGY.findall(text)
    strategy = " ".join(found[-1].split()).strip(" *`\"'") if found else None
    return verdict, (strategy or None)


def matches_reference(answer: str, reference: str) -> bool:
    """Whether the answer's final answer equals the reference (numbers as numbers, text trimmed and
    lower-cased)."""
    found = extract_normalized(answer)
    return found is not None and found == normalize_answer(reference)


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    params = state.get("params") or SplParams().model_dump()
    request = dict(state.get("request") or {})
    optillm_learning = request.pop(OPTILLM_FIELD, None) is True  # never forwarded upstream
    learning = bool(params.get("learning")) or optillm_learning
    question = last_user_text(state["messages"])
    prediction = await asyncio.to_thread(load_classifier().predict, question)
    problem_type = prediction.label
    stored = await _store(runtime).read(problem_type)
    chosen = usable(stored, params)
    private = {
        "type": problem_type,
        "confidence": round(prediction.confidence, 4),
        "applied": [s.id for s in chosen],
        "learning": learning,
        "question": question[:QUESTION_CHARS],
    }
    notes = [
        f"spl.pre: type {problem_type} ({prediction.confidence:.2f}); applied "
        + (", ".join(f"#{s.id}" for s in chosen) or "none")
        + f" of {len(stored)} stored; {'learning' if learning else 'inference only'}"
    ]
    messages = with_strategies(state["messages"], problem_type, chosen) if chosen else state["messages"]
    return {"messages": messages, "request": request, "private": private, "notes": notes}


async def _ask(runtime: Runtime[RunContext], prompt: str, *, node: str, temperature: float) -> tuple[str, Any]:
    completion = await runtime.context.llm.chat(
        [{"role": "user", "content": prompt}], node=node, temperature=temperature, max_tokens=LEARNING_MAX_TOKENS
    )
    return completion.text, completion.usage


async def learn(state: PluginState, runtime: Runtime[RunContext], answer: str) -> tuple[list[str], dict[str, Any]]:
    """Reflect on the answer, record, create, refine and prune (module docstring): notes and usage."""
    params, private = state.get("params") or {}, state.get("private") or {}
    store = _store(runtime)
    problem_type, question = private["type"], private.get("question") or ""
    applied = [s for s in await store.read(problem_type) if s.id in set(private.get("applied") or [])]
    reference = params.get("reference")
    prompt = REFLECT_PROMPT.format(
        type=problem_type.replace("_", " "),
        question=question,
        answer=answer[:ANSWER_CHARS],
        reference=f"\nThe expected answer: {reference}\n" if reference else "",
        applied=(
            "\nStrategies the assistant was given:\n" + "\n".join(f"- {s.text}" for s in applied) + "\n"
            if applied
            else ""
        ),
    )
    text, usage = await _ask(runtime, prompt, node="spl.reflect", temperature=REFLECT_TEMPERATURE)
    verdict, strategy = parse_reflection(text)
    success = matches_reference(answer, reference) if reference else bool(verdict)
    by = "the reference" if reference else ("the model's verdict" if verdict is not None else "no verdict")
    notes = [f"spl.post: answer judged {'a success' if success else 'a failure'} by {by}"]
    await store.record([s.id for s in applied], success=success, example=question)
    if applied:
        notes.append(f"spl.post: recorded a use of {', '.join(f'#{s.id}' for s in applied)}")
    notes += await _create(store, problem_type, strategy, params, runtime.context.run_id, question)
    refined, refine_usage = await _refine(store, runtime, problem_type, [s.id for s in applied], params)
    notes += refined
    usage = add_usage(usage, refine_usage)
    gone = await store.prune(problem_type, int(params["max_per_type"]))
    if gone:
        notes.append(f"spl.post: pruned {', '.join(f'#{i}' for i in gone)} (at most {params['max_per_type']} per type)")
    return notes, usage


async def _create(
    store: StrategyStore, problem_type: str, strategy: str | None, params: dict[str, Any], run_id: str, example: str
) -> list[str]:
    if strategy is None:
        return ["spl.post: the reflection wrote no strategy"]
    stored = await store.read(problem_type)
    closest = max(stored, key=lambda s: similarity(s.text, strategy), default=None)
    if closest is not None and similarity(closest.text, strategy) >= float(params["similarity"]):
        return [f"spl.post: the new strategy is like #{closest.id}; not added"]
    new = await store.add(problem_type, strategy, example=example, source_run=run_id)
    return [f"spl.post: created #{new.id} for {problem_type}: {strategy[:120]}"]


async def _refine(
    store: StrategyStore, runtime: Runtime[RunContext], problem_type: str, ids: list[int], params: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """Rewrites the first applied strategy whose uses reached a multiple of `refine_every` (one call)."""
    every = int(params["refine_every"])
    due = [s for s in await store.read(problem_type) if s.id in set(ids) and every and s.uses and s.uses % every == 0]
    if not due:
        return [], empty_usage()
    s = min(due, key=lambda x: x.id)
    prompt = REFINE_PROMPT.format(
        type=problem_type.replace("_", " "),
        successes=s.successes,
        uses=s.uses,
        text=s.text,
        example=(s.example or "")[:QUESTION_CHARS],
    )
    text, usage = await _ask(runtime, prompt, node="spl.refine", temperature=REFINE_TEMPERATURE)
    _, rewritten = parse_reflection(text)
    if rewritten is None:
        return [f"spl.post: refining #{s.id} gave no strategy; kept as it was"], usage
    await store.refine(s.id, rewritten)
    return [f"spl.post: refined #{s.id} after {s.uses} uses: {rewritten[:120]}"], usage


async def post(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    answers = state.get("answers") or []
    private = state.get("private") or {}
    if not private.get("learning") or not answers:
        return {"answers": answers}
    message = answers[0].get("message") or {}
    if message.get("tool_calls"):
        return {"answers": answers, "notes": ["spl.post: the answer calls tools; nothing learned"]}
    notes, usage = await learn(state, runtime, message_text(message))
    return {"answers": answers, "notes": notes, "usage": usage}


SPEC = PluginSpec(
    name="spl",
    description="System prompt learning: the problem's type is classified locally, the best stored strategies "
    "for it are added to the system prompt; with learning, strategies are rated, created, refined and pruned.",
    pre=pre,
    post=post,
    params=SplParams,
    needs=frozenset({"store"}),
    calls="learning * (1 + min(1, refine_every))",
    rounds="learning * (1 + min(1, refine_every))",
    stream=unchanged_stream,  # the text streams as it is: post only learns from it
)
