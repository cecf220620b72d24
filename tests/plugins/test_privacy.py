"""The privacy plugin's detectors, placeholders and streaming restoration."""

from __future__ import annotations

import pytest
from engine_stack import ask, ask_streamed, make_runner, streamed_text
from scripted import ScriptedBackend

from optigraph.plugins.privacy import Anonymizer, Restorer, restore

DETECTED = [
    ("EMAIL", "write to jane.doe+work@example.co.uk today", "jane.doe+work@example.co.uk"),
    ("PHONE", "call +44 20 7946 0958 after six", "+44 20 7946 0958"),
    ("PHONE", "call (555) 123-4567 after six", "(555) 123-4567"),
    ("CARD", "card 4111 1111 1111 1111 expires", "4111 1111 1111 1111"),
    ("IBAN", "pay to DE89 3704 0044 0532 0130 00 now", "DE89 3704 0044 0532 0130 00"),
    ("IP", "the host 192.168.10.20 is down", "192.168.10.20"),
    ("IP", "the host 2001:db8::8a2e:370:7334 is down", "2001:db8::8a2e:370:7334"),
]


@pytest.mark.parametrize(("label", "text", "value"), DETECTED)
def test_each_kind_is_replaced_and_restored(label: str, text: str, value: str) -> None:
    anonymizer = Anonymizer()
    out = anonymizer.text(text)
    assert value not in out
    assert f"[{label}_1]" in out
    assert restore(out, anonymizer.mapping) == text


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 is not a valid card number",  # fails the Luhn check
    "IBAN DE00 3704 0044 0532 0130 00 has a wrong checksum",
    "version 1.2.3.4 is not an address 999.1.1.1",
    "there were 42 people and 7 dogs",
])
def test_lookalikes_are_left_alone(text: str) -> None:
    anonymizer = Anonymizer()
    assert anonymizer.text(text) == text.replace("1.2.3.4", "[IP_1]")
    assert all(not k.startswith(("[CARD", "[IBAN", "[PHONE")) for k in anonymizer.mapping)


def test_the_same_value_gets_the_same_placeholder_across_messages() -> None:
    anonymizer = Anonymizer()
    first = anonymizer.message({"role": "system", "content": "Mail bob@example.com"})
    second = anonymizer.message({"role": "user", "content": [{"type": "text", "text": "bob@example.com or amy@example.org"},
                                                             {"type": "image_url", "image_url": {"url": "x"}}]})
    assert first["content"] == "Mail [EMAIL_1]"
    assert second["content"][0]["text"] == "[EMAIL_1] or [EMAIL_2]"
    assert second["content"][1] == {"type": "image_url", "image_url": {"url": "x"}}


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_a_placeholder_split_across_chunks_is_restored(size: int) -> None:
    mapping = {"[EMAIL_1]": "bob@example.com", "[PHONE_12]": "+1 555 0100 200"}
    text = "Dear [EMAIL_1], call [PHONE_12] or [not a placeholder] [EMAIL_9]."
    restorer = Restorer(mapping)
    pieces = [restorer.feed(text[i:i + size]) for i in range(0, len(text), size)]
    out = "".join(pieces) + restorer.flush()
    assert out == "Dear bob@example.com, call +1 555 0100 200 or [not a placeholder] [EMAIL_9]."


class CharStream(ScriptedBackend):
    """Streams each answer three characters at a time, so placeholders arrive split."""

    async def stream(self, body, *, api_key=None):  # type: ignore[override]
        call_index = self._enter(body)
        try:
            choices = self._choices(body, call_index)
            self.usages.append(self._usage(body, choices))
            base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
            for c in choices:
                text = c["message"]["content"]
                for i in range(0, len(text), 3):
                    yield {**base, "choices": [{"index": c["index"], "delta": {"content": text[i:i + 3]}}]}
                yield {**base, "choices": [{"index": c["index"], "delta": {}, "finish_reason": "stop"}]}
            yield {**base, "choices": [], "usage": self._usage(body, choices)}
        finally:
            self.in_flight -= 1


QUESTION = {"role": "user", "content": "I am bob@example.com, phone +44 20 7946 0958. Reply to me."}


def answer_with_the_placeholders(body: dict) -> str:
    return "Sure, " + body["messages"][-1]["content"].removeprefix("I am ")


async def test_the_upstream_sees_placeholders_and_the_client_the_originals() -> None:
    backend = ScriptedBackend(answer_with_the_placeholders)
    response = await ask(make_runner(backend), {"model": "privacy&none-m", "messages": [QUESTION]})
    sent = str(backend.calls)
    assert "bob@example.com" not in sent and "7946" not in sent
    assert backend.calls[0]["messages"][0]["content"] == "I am [EMAIL_1], phone [PHONE_1]. Reply to me."
    assert response["choices"][0]["message"]["content"] == "Sure, bob@example.com, phone +44 20 7946 0958. Reply to me."


async def test_streamed_answers_are_restored_chunk_by_chunk() -> None:
    backend = CharStream(answer_with_the_placeholders)
    chunks = await ask_streamed(make_runner(backend), {"model": "privacy&none-m", "messages": [QUESTION]})
    assert "bob@example.com" not in str(backend.calls)
    text_chunks = [c for ch in chunks for c in ch["choices"] if (c.get("delta") or {}).get("content")]
    assert len(text_chunks) > 10  # it really streamed, piece by piece
    assert all("[EMAIL" not in c["delta"]["content"] and "[PHONE" not in c["delta"]["content"] for c in text_chunks)
    assert streamed_text(chunks) == "Sure, bob@example.com, phone +44 20 7946 0958. Reply to me."


def test_dates_are_not_phone_numbers() -> None:
    assert Anonymizer().text("due 2024-01-15 or 15.01.2024") == "due 2024-01-15 or 15.01.2024"
