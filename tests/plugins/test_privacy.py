"""The privacy plugin's detectors (one test for each kind it detects and each it does not, as
docs/plugins.md lists them), placeholders, the encrypted mapping and streaming restoration."""

from __future__ import annotations

import pytest
from engine_stack import ask, ask_streamed, make_runner, streamed_text
from scripted import ScriptedBackend

from optigraph.config import Settings
from optigraph.core.context import RunContext
from optigraph.errors import PrivacyKeyChanged
from optigraph.plugins import pii
from optigraph.plugins.privacy import (
    Anonymizer,
    Restorer,
    _fernet,
    restore,
    restore_json,
    seal,
    unseal,
)

DETECTED = [
    ("EMAIL", "write to jane.doe+work@example.co.uk today", "jane.doe+work@example.co.uk"),
    ("PHONE", "call +44 20 7946 0958 after six", "+44 20 7946 0958"),
    ("PHONE", "call (555) 123-4567 after six", "(555) 123-4567"),
    ("CARD", "card 4111 1111 1111 1111 expires", "4111 1111 1111 1111"),
    ("IBAN", "pay to DE89 3704 0044 0532 0130 00 now", "DE89 3704 0044 0532 0130 00"),
    ("IP", "the host 192.168.10.20 is down", "192.168.10.20"),
    ("IP", "the host 2001:db8::8a2e:370:7334 is down", "2001:db8::8a2e:370:7334"),
    ("SSN", "my SSN is 536-22-1234 as filed", "536-22-1234"),
    ("CRYPTO", "send it to 1BoatSLRHtKNngkdXEeobR76b53LETtpyT please", "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"),
    ("MAC", "the laptop 00:1A:2B:3C:4D:5E is blocked", "00:1A:2B:3C:4D:5E"),
    ("NAME", "Hello, my name is Jane Roe and I need help", "Jane Roe"),
    ("NAME", "Hi, I'm Jean-Luc O'Brien from accounting", "Jean-Luc O'Brien"),
    ("NAME", "Please forward this to Dr. Amara Okafor today", "Amara Okafor"),
    ("NAME", "Name: Søren Kierkegaard", "Søren Kierkegaard"),
    ("NAME", "ask Alice Smith about the invoice", "Alice Smith"),
    ("NAME", "forward it to Jennifer Lopez-Garcia, please", "Jennifer Lopez-Garcia"),
    ("NAME", "Robert said the build is green", "Robert"),
    ("NAME", "Will Smith starred in it", "Will Smith"),
]

# What is not detected (docs/plugins.md says so): each stays in the text as it was.
NOT_DETECTED = [
    ("a rare first name without a cue", "ask Zebulon about the invoice"),
    ("a surname alone", "ask Smith about the invoice"),
    ("first names that are words, alone", "Will you help? Grace periods end in May; Frank talk"),
    ("languages named like people", "Ruby on Rails, Julia arrays and Ada tasks"),
    ("capitalised common words", "Sum the Numbers in the List, then Count the Apples"),
    ("a place named like a person", "Is Paris in France or in Georgia?"),
    ("a postal address", "ship it to 221B Baker Street, London NW1 6XE"),
    ("a date of birth", "born on 14 March 1879"),
    ("a passport number", "passport number 533380006"),
    ("an organisation", "she works at Acme Corporation in Berlin"),
    ("a lowercase word after a cue", "I am happy to help"),
]


@pytest.mark.parametrize(("label", "text", "value"), DETECTED)
def test_each_kind_is_replaced_and_restored(label: str, text: str, value: str) -> None:
    anonymizer = Anonymizer()
    out = anonymizer.text(text)
    assert value not in out
    assert f"[{label}_1]" in out
    assert restore(out, anonymizer.mapping) == text


@pytest.mark.parametrize(("kind", "text"), NOT_DETECTED, ids=[k for k, _ in NOT_DETECTED])
def test_what_is_not_detected_passes_unchanged(kind: str, text: str) -> None:
    anonymizer = Anonymizer()
    assert anonymizer.text(text) == text
    assert anonymizer.mapping == {}


def test_the_email_detector_never_reaches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Presidio's e-mail check uses tldextract, whose default fetches the public suffix list."""
    import socket

    lookups: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: lookups.append(host) or [])
    pii._recognizers.cache_clear()
    try:
        assert Anonymizer().text("mail amy@example.org, not amy@localhost") == "mail [EMAIL_1], not amy@localhost"
    finally:
        pii._recognizers.cache_clear()
    assert lookups == []


def test_overlapping_findings_keep_the_stronger_one() -> None:
    """libphonenumber also reads an IPv4 address as a phone number; the address wins."""
    anonymizer = Anonymizer()
    assert anonymizer.text("ping 192.168.10.20 now") == "ping [IP_1] now"


def test_the_mapping_is_kept_encrypted_and_needs_the_same_key() -> None:
    mapping = {"[EMAIL_1]": "bob@example.com", "[NAME_1]": "Jane Roe"}
    context = RunContext(run_id="r", llm=None, settings=Settings(privacy_key="first key"))  # type: ignore[arg-type]
    token = seal(mapping, _fernet(context))
    assert "bob@example.com" not in token and "Jane" not in token and "EMAIL" not in token
    assert unseal({"mapping": token}, _fernet(context)) == mapping
    other = RunContext(run_id="r", llm=None, settings=Settings(privacy_key="second key"))  # type: ignore[arg-type]
    with pytest.raises(PrivacyKeyChanged):
        unseal({"mapping": token}, _fernet(other))


def test_a_drawn_key_differs_per_server_start() -> None:
    assert Settings().privacy_key.get_secret_value() != Settings().privacy_key.get_secret_value()


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 is not a valid card number",  # fails the Luhn check
        "IBAN DE00 3704 0044 0532 0130 00 has a wrong checksum",
        "version 1.2.3.4 is not an address 999.1.1.1",
        "there were 42 people and 7 dogs",
    ],
)
def test_lookalikes_are_left_alone(text: str) -> None:
    anonymizer = Anonymizer()
    assert anonymizer.text(text) == text.replace("1.2.3.4", "[IP_1]")
    assert all(not k.startswith(("[CARD", "[IBAN", "[PHONE")) for k in anonymizer.mapping)


def test_the_same_value_gets_the_same_placeholder_across_messages() -> None:
    anonymizer = Anonymizer()
    first = anonymizer.message({"role": "system", "content": "Mail bob@example.com"})
    second = anonymizer.message(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "bob@example.com or amy@example.org"},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        }
    )
    assert first["content"] == "Mail [EMAIL_1]"
    assert second["content"][0]["text"] == "[EMAIL_1] or [EMAIL_2]"
    assert second["content"][1] == {"type": "image_url", "image_url": {"url": "x"}}


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_a_placeholder_split_across_chunks_is_restored(size: int) -> None:
    mapping = {"[EMAIL_1]": "bob@example.com", "[PHONE_12]": "+1 555 0100 200"}
    text = "Dear [EMAIL_1], call [PHONE_12] or [not a placeholder] [EMAIL_9]."
    restorer = Restorer(mapping)
    pieces = [restorer.feed(text[i : i + size]) for i in range(0, len(text), size)]
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
                    yield {**base, "choices": [{"index": c["index"], "delta": {"content": text[i : i + 3]}}]}
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


async def test_a_name_after_a_cue_is_replaced_upstream_and_restored() -> None:
    backend = ScriptedBackend(lambda body: "Hello " + body["messages"][-1]["content"].split("is ")[1])
    response = await ask(
        make_runner(backend),
        {"model": "privacy&none-m", "messages": [{"role": "user", "content": "My name is Ada Lovelace"}]},
    )
    assert backend.calls[0]["messages"][0]["content"] == "My name is [NAME_1]"
    assert response["choices"][0]["message"]["content"] == "Hello Ada Lovelace"


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


def test_tool_call_arguments_are_anonymized_and_restored_as_json() -> None:
    anonymizer = Anonymizer()
    call = {"id": "c1", "type": "function", "function": {"name": "mail", "arguments": '{"to": "bob@example.com"}'}}
    sent = anonymizer.message({"role": "assistant", "content": None, "tool_calls": [call]})
    assert sent["tool_calls"][0]["function"]["arguments"] == '{"to": "[EMAIL_1]"}'
    assert restore_json('{"who": "[NAME_1]"}', {"[NAME_1]": 'Jane "JJ" Roe'}) == '{"who": "Jane \\"JJ\\" Roe"}'


TOOLS = [
    {
        "type": "function",
        "function": {"name": "send_mail", "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}},
    }
]


def reply_with_a_tool_call(body: dict) -> dict:
    address = body["messages"][-1]["content"].split()[-1]
    return {
        "content": None,
        "finish_reason": "tool_calls",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "send_mail", "arguments": f'{{"to": "{address}"}}'},
            }
        ],
    }


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_tool_call_gets_the_originals_and_the_user_field_stays_home(streamed: bool) -> None:
    backend = ScriptedBackend(reply_with_a_tool_call)
    body = {
        "model": "privacy&none-m",
        "tools": TOOLS,
        "user": "jane.roe@example.org",
        "metadata": {"who": "jane.roe@example.org"},
        "messages": [{"role": "user", "content": "Mail bob@example.com"}],
    }
    runner = make_runner(backend)
    if streamed:
        chunks = await ask_streamed(runner, body)
        deltas = [c["delta"] for ch in chunks for c in ch["choices"] if c.get("delta", {}).get("tool_calls")]
        arguments = "".join(tc["function"].get("arguments") or "" for d in deltas for tc in d["tool_calls"])
    else:
        message = (await ask(runner, body))["choices"][0]["message"]
        arguments = message["tool_calls"][0]["function"]["arguments"]
    assert arguments == '{"to": "bob@example.com"}'
    sent = str(backend.calls)
    assert "example.org" not in sent and "bob@example.com" not in sent
    assert backend.calls[0]["messages"][0]["content"] == "Mail [EMAIL_1]"
    assert backend.calls[0]["user"] == "[EMAIL_2]" and backend.calls[0]["metadata"] == {"who": "[EMAIL_2]"}
