"""The memory plugin in-process: a document many times a small model's context answered from the
chunks that matter, roles and non-text parts kept, streaming, conversation memory on a SQLite file."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from engine_stack import ask, ask_streamed, make_runner, streamed_text
from scripted import ScriptedBackend, prompt_tokens

from optigraph.core.messages import message_text
from optigraph.errors import InvalidRequest
from optigraph.memory.conversations import ConversationStore
from optigraph.memory.db import open_database
from optigraph.memory.migrate import upgrade_schema
from optigraph.plugins.context_memory import _Long, _render
from optigraph.plugins.retrieval import estimate_tokens, split_chunks

CONTEXT = 4096  # the scripted model's context, in its own tokens (words, plus one per message)
FACT = "The vault combination is 7-3-9-1, kept by Ingrid Halvorsen."
QUESTION = "What is the vault combination, and who keeps it?"
VOCAB = [
    "river",
    "stone",
    "market",
    "evening",
    "garden",
    "letter",
    "window",
    "harbor",
    "winter",
    "candle",
    "bridge",
    "orchard",
    "lantern",
    "meadow",
    "thread",
    "copper",
    "valley",
    "island",
    "mirror",
    "ladder",
]


def document(words: int, seed: int = 7) -> str:
    """`words` words of filler sentences with FACT in the middle."""
    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(VOCAB) for _ in range(12)).capitalize() + "." for _ in range(words // 12)]
    sentences.insert(len(sentences) // 2, FACT)
    return " ".join(sentences)


def small_model(body: dict[str, Any]) -> Any:
    """A model with a 4,096-token context that answers from what its prompt says."""
    if prompt_tokens(body) > CONTEXT:
        return ValueError(f"context length exceeded: {prompt_tokens(body)} > {CONTEXT}")
    prompt = "\n".join(message_text(m) for m in body["messages"])
    return "It is 7-3-9-1; Ingrid Halvorsen keeps it." if "7-3-9-1" in prompt else "I cannot tell."


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ConversationStore]:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    upgrade_schema(url)
    engine = open_database(url)
    yield ConversationStore(engine)
    await engine.dispose()


def body(messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    return {
        "model": "memory&none-small",
        "messages": messages,
        **({"optillm_params": {"memory": params}} if params else {}),
    }


async def test_a_document_ten_times_the_context_is_answered_from_its_relevant_chunks(store: ConversationStore) -> None:
    doc = document(60_000)
    messages = [
        {"role": "system", "content": "Answer from this document.\n\n" + doc},
        {"role": "user", "content": QUESTION},
    ]
    assert prompt_tokens({"messages": messages}) > 10 * CONTEXT
    backend = ScriptedBackend(small_model)
    out = await ask(make_runner(backend, store=store), body(messages, max_context_tokens=3000))
    assert out["choices"][0]["message"]["content"] == "It is 7-3-9-1; Ingrid Halvorsen keeps it."
    [sent] = backend.calls
    assert prompt_tokens(sent) <= CONTEXT
    assert sum(estimate_tokens(message_text(m)) for m in sent["messages"]) <= 3000
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    system = sent["messages"][0]["content"]
    assert FACT in system  # whole: the overlap keeps a sentence on a chunk border in one piece
    assert system.startswith("[memory: ") and "of 6" in system.split("parts")[0]  # the note says how many of ~600
    assert sent["messages"][-1]["content"] == QUESTION


async def test_a_long_user_turn_keeps_its_question_last_and_word_for_word(store: ConversationStore) -> None:
    doc = document(60_000, seed=3)
    text = "Here is the report.\n" + doc + "\n\n" + QUESTION
    backend = ScriptedBackend(small_model)
    out = await ask(
        make_runner(backend, store=store), body([{"role": "user", "content": text}], max_context_tokens=3000)
    )
    assert "7-3-9-1" in out["choices"][0]["message"]["content"]
    sent = backend.calls[0]["messages"][0]["content"]
    assert prompt_tokens(backend.calls[0]) <= CONTEXT
    assert sent.endswith("\n\n" + QUESTION)
    assert "Here is the report." in sent and FACT in sent


async def test_a_short_conversation_goes_upstream_unchanged(store: ConversationStore) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi " * 500},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    backend = ScriptedBackend(lambda b: "ok")
    await ask(make_runner(backend, store=store), body(messages))
    assert backend.calls[0]["messages"] == messages


async def test_roles_fields_and_non_text_parts_are_kept(store: ConversationStore) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages = [
        {"role": "developer", "content": "Use the tool output."},
        {"role": "user", "content": "Look it up.", "name": "ana"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "call_1", "content": document(20_000, seed=1)},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Appendix:\n" + document(20_000, seed=2)},
                image,
                {"type": "text", "text": "\n" + QUESTION},
            ],
        },
    ]
    backend = ScriptedBackend(small_model)
    await ask(make_runner(backend, store=store), body(messages, max_context_tokens=3000))
    sent = backend.calls[0]["messages"]
    assert [m["role"] for m in sent] == ["developer", "user", "assistant", "tool", "user"]
    assert sent[:3] == messages[:3]  # short turns are kept as they are
    assert sent[3]["tool_call_id"] == "call_1" and sent[3]["content"].startswith("[memory: ")
    last = sent[4]["content"]
    assert [p["type"] for p in last] == ["text", "image_url"] and last[1] == image
    assert last[0]["text"].endswith(QUESTION)
    assert FACT in sent[3]["content"] + last[0]["text"]
    assert sum(estimate_tokens(message_text(m)) for m in sent) <= 3000


async def test_streaming_passes_the_answer_through_as_it_comes(store: ConversationStore) -> None:
    backend = ScriptedBackend(small_model)
    messages = [{"role": "system", "content": document(30_000)}, {"role": "user", "content": QUESTION}]
    chunks = await ask_streamed(make_runner(backend, store=store), body(messages, max_context_tokens=3000))
    assert streamed_text(chunks) == "It is 7-3-9-1; Ingrid Halvorsen keeps it."
    assert len([c for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("content")]) > 1


async def test_a_conversation_remembers_across_requests(store: ConversationStore) -> None:
    backend = ScriptedBackend(lambda b: "Noted." if b["choice_index"] == 0 and len(backend.calls) == 1 else "ok")
    runner = make_runner(backend, store=store)
    await ask(
        runner, body([{"role": "user", "content": "My locker number is 4417 at the north gym."}], conversation="c-1")
    )
    await ask(runner, body([{"role": "user", "content": "What is my locker number?"}], conversation="c-1"))
    await ask(runner, body([{"role": "user", "content": "What is my locker number?"}], conversation="c-2"))
    second, other = backend.calls[1]["messages"], backend.calls[2]["messages"]
    assert second[0]["role"] == "system" and "4417" in second[0]["content"] and second[-1]["role"] == "user"
    assert all("4417" not in message_text(m) for m in other)  # another conversation sees nothing of it
    stored = await store.recall("c-1")
    assert [c.role for c in stored] == ["user", "assistant", "user", "assistant"]


async def test_memory_is_refused_by_a_runner_without_a_database() -> None:
    runner = make_runner(ScriptedBackend())
    with pytest.raises(InvalidRequest) as err:
        await runner.prepare(body([{"role": "user", "content": "hi"}]), client_key=None)
    assert err.value.code == "approach_unsupported" and "store" in err.value.message


@pytest.mark.parametrize(
    "params,where",
    [
        ({"overlap_tokens": 200, "chunk_tokens": 200}, "optillm_params.memory"),
        ({"chunk_tokens": 5}, "optillm_params.memory.chunk_tokens"),
        ({"conversation": ""}, "optillm_params.memory.conversation"),
        ({"max_context_tokens": 300, "chunk_tokens": 200}, "optillm_params.memory"),
    ],
)
async def test_bad_parameters_are_a_400_naming_them(
    store: ConversationStore, params: dict[str, Any], where: str
) -> None:
    runner = make_runner(ScriptedBackend(), store=store)
    with pytest.raises(InvalidRequest) as err:
        await runner.prepare(body([{"role": "user", "content": "hi"}], **params), client_key=None)
    assert err.value.param == where


async def test_a_document_sent_once_answers_later_questions_of_the_conversation(store: ConversationStore) -> None:
    doc = document(60_000, seed=11)
    backend = ScriptedBackend(small_model)
    runner = make_runner(backend, store=store)
    await ask(
        runner,
        body(
            [{"role": "user", "content": "Keep this report.\n" + doc + "\n\nSummarise it."}],
            conversation="report",
            max_context_tokens=3000,
        ),
    )
    out = await ask(
        runner, body([{"role": "user", "content": QUESTION}], conversation="report", max_context_tokens=3000)
    )
    assert out["choices"][0]["message"]["content"] == "It is 7-3-9-1; Ingrid Halvorsen keeps it."
    sent = backend.calls[1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"] and prompt_tokens(backend.calls[1]) <= CONTEXT
    assert "Ingrid Halvorsen" in sent[0]["content"]


async def test_plugin_stacks_with_privacy_so_the_table_holds_placeholders(store: ConversationStore) -> None:
    backend = ScriptedBackend(lambda b: "Noted.")
    runner = make_runner(backend, store=store)
    await ask(
        runner,
        {
            **body([{"role": "user", "content": "Mail me at jane.roe@example.org please."}], conversation="pii"),
            "model": "privacy&memory&none-small",
        },
    )
    stored = " ".join(c.text for c in await store.recall("pii"))
    assert "jane.roe@example.org" not in stored and "[EMAIL_1]" in stored


def test_kept_chunks_are_joined_in_order_and_gaps_marked() -> None:
    text = "\n\n".join(f"para{i} " + "word " * 30 for i in range(10))
    chunks = split_chunks(text, chunk_tokens=40, overlap_tokens=0)
    item = _Long(index=0, text=text, lead_end=0, tail_start=len(text), chunks=chunks)
    out = _render(item, [4, 1, 2])
    body = out.split("\n\n", 1)[1]
    assert out.startswith(f"[memory: 3 of {len(chunks)} parts")
    assert body == "\n\n".join(["[...]", text[chunks[1].start : chunks[2].end], "[...]", chunks[4].text, "[...]"])
    assert _render(item, list(range(len(chunks)))).split("\n\n", 1)[1] == text.strip()
