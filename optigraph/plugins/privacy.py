"""`privacy`: personal data never leaves the machine. `pre` replaces what its detectors find in the
conversation with stable placeholders (`[EMAIL_1]`, `[PHONE_2]`...); the wrapped approach and the
upstream see only those; `post` puts the originals back in every answer, and while streaming a
placeholder split across chunks is held back until it is whole, then restored.

Detected (`optigraph.plugins.pii`: Presidio's pattern recognizers and ours for names; no model is
loaded or downloaded): e-mail addresses, phone numbers, payment card numbers (Luhn-valid), IBANs
(checksum-valid), IPv4 and IPv6 addresses, MAC addresses, US social security numbers, Bitcoin
addresses, and person names after a cue ("my name is", "I am", "call me", "name:", Mr/Ms/Dr...) or
starting with a common first name ("ask Alice Smith"; census lists, optigraph/plugins/person_names.py).
Not detected: rare names without a cue, a surname alone, postal addresses, dates (of birth or other),
passport and other national numbers, organisations and places. Read: the messages' text, their tool calls'
arguments, the `user` field and `metadata` values; a request with `tools` is answered whole when it
streams, so that `post` restores the tool calls' arguments too.

The same value gets the same placeholder everywhere in the conversation. The mapping (placeholder ->
original) is this plugin's private state, which is checkpointed with the run so that a resumed run
can still restore its answer; it is stored only encrypted (Fernet, with a key derived from the
server's `privacy_key` setting), so the checkpoints' copy of the plugin's state holds placeholders and
a token, never the originals. Nothing with the originals is sent upstream.

First in an expression (`privacy&moa`, or `privacy` alone), the plugin works at the run's edge:
`admit` anonymizes the client's request before the run is recorded, so the run's stored request, its
resume spec, every checkpoint (the first, the graph's input, included), every upstream call and the
stored answer hold placeholders only; `post` leaves the answers as they are, and `release` restores
the client's copy as it leaves (streamed text through the Restorer). Further in (`readurls&privacy&moa`)
it anonymizes what reaches it, and the parts before it, the run's input and its answer hold originals.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.spec import PluginSpec
from optigraph.core.state import Answer, PluginState
from optigraph.errors import OptigraphError, PrivacyKeyChanged
from optigraph.plugins.pii import LABELS, find

_LABELS = "|".join(sorted(set(LABELS.values())))
_PLACEHOLDER = re.compile(rf"\[(?:{_LABELS})_\d+\]")
_LONGEST_PLACEHOLDER = max(len(f"[{label}_99999]") for label in LABELS.values())


class Anonymizer:
    """Replaces detected values with placeholders; the same value always gets the same one."""

    def __init__(self, mapping: dict[str, str] | None = None) -> None:
        self.mapping: dict[str, str] = dict(mapping or {})  # placeholder -> original
        self._by_value = {v: k for k, v in self.mapping.items()}

    def _placeholder(self, label: str, value: str) -> str:
        found = self._by_value.get(value)
        if found is None:
            count = sum(1 for k in self.mapping if k.startswith(f"[{label}_")) + 1
            found = f"[{label}_{count}]"
            self.mapping[found] = value
            self._by_value[value] = found
        return found

    def text(self, text: str) -> str:
        """`text` with each detected value replaced by its placeholder."""
        out, last = [], 0
        for f in find(text):
            out += [text[last : f.start], self._placeholder(f.label, text[f.start : f.end])]
            last = f.end
        return "".join(out) + text[last:]

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message with its text, its text parts and its tool calls' arguments anonymized."""
        out = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            out["content"] = self.text(content)
        elif isinstance(content, list):
            out["content"] = [
                {**p, "text": self.text(p["text"])}
                if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                else p
                for p in content
            ]
        if isinstance(message.get("tool_calls"), list):
            out["tool_calls"] = [_map_arguments(call, self.text) for call in message["tool_calls"]]
        return out

    def request(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The forwarded fields that name the end user (`user`, `metadata` values) anonymized; None when
        there is nothing to change."""
        out = dict(request)
        if isinstance(request.get("user"), str):
            out["user"] = self.text(request["user"])
        if isinstance(request.get("metadata"), dict):
            out["metadata"] = {k: self.text(v) if isinstance(v, str) else v for k, v in request["metadata"].items()}
        return out if out != request else None


def _map_arguments(call: Any, rewrite: Any) -> Any:
    """A tool call with `rewrite` applied to its function's arguments (a JSON string)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    return {**call, "function": {**function, "arguments": rewrite(function["arguments"])}}


def restore(text: str, mapping: dict[str, str]) -> str:
    """`text` with every known placeholder replaced by its original (unknown ones are left as they are)."""
    return _PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


def restore_json(text: str, mapping: dict[str, str]) -> str:
    """`restore` inside a JSON document (tool-call arguments): each original escaped as a JSON string body."""
    return _PLACEHOLDER.sub(
        lambda m: json.dumps(mapping[m.group(0)])[1:-1] if m.group(0) in mapping else m.group(0), text
    )


class Restorer:
    """The streaming form of `restore`: holds back a trailing `[...` that may be a placeholder's start."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping
        self.pending = ""

    def feed(self, text: str) -> str:
        data = self.pending + text
        cut = data.rfind("[")
        if cut != -1 and "]" not in data[cut:] and len(data) - cut < _LONGEST_PLACEHOLDER:
            self.pending, data = data[cut:], data[:cut]
        else:
            self.pending = ""
        return restore(data, self.mapping)

    def flush(self) -> str:
        data, self.pending = self.pending, ""
        return restore(data, self.mapping)


def _fernet(runtime_context: RunContext | None) -> Fernet:
    """The cipher of the mapping, keyed by the server's `privacy_key` (any string: it is hashed)."""
    return _cipher(runtime_context.settings if runtime_context is not None else None)


def _cipher(settings: Any) -> Fernet:
    if settings is None:
        raise OptigraphError("the privacy plugin needs the server's settings (its privacy_key)")
    secret = settings.privacy_key.get_secret_value().encode()
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"optigraph privacy mapping\0" + secret).digest()))


def seal(mapping: dict[str, str], fernet: Fernet) -> str:
    """The mapping as an encrypted token, as it is kept in the checkpointed private state."""
    return fernet.encrypt(json.dumps(mapping).encode()).decode()


def unseal(private: dict[str, Any], fernet: Fernet) -> dict[str, str]:
    """The mapping from the private state; a clear error when the key has changed since it was sealed."""
    token = private.get("mapping")
    if not token:
        return {}
    try:
        return json.loads(fernet.decrypt(token.encode()))
    except InvalidToken as exc:
        raise PrivacyKeyChanged(
            "the privacy mapping of this run was encrypted with another privacy_key (the server "
            "restarted without OPTIGRAPH_PRIVACY_KEY set?): its answer cannot be restored"
        ) from exc


def _anonymize(
    messages: list[dict[str, Any]], request: dict[str, Any], mapping: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, str]]:
    anonymizer = Anonymizer(mapping)
    return [anonymizer.message(m) for m in messages], anonymizer.request(request), anonymizer.mapping


def _found(mapping: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for placeholder in mapping:
        label = placeholder[1:].split("_")[0]
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n} {label.lower()}" for label, n in sorted(counts.items())) or "nothing"


async def admit(body: dict[str, Any], settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The client's request with its personal data replaced, before anything of the run is stored."""
    fernet = _cipher(settings)
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    # The detectors are CPU work (and the first call imports Presidio): off the event loop.
    anonymized, request, mapping = await asyncio.to_thread(_anonymize, list(messages), dict(body))
    out = {**(request or body), "messages": anonymized}
    return out, {"mapping": seal(mapping, fernet), "edge": True, "found": _found(mapping)}


def release(answers: list[dict[str, Any]], private: dict[str, Any], settings: Any) -> list[dict[str, Any]]:
    """The client's copy of the answers, placeholders restored."""
    return _restored(answers, unseal(private, _cipher(settings)))


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    fernet = _fernet(runtime.context)
    private = state.get("private") or {}
    known = unseal(private, fernet)  # at the edge, what `admit` already replaced
    messages, request, mapping = await asyncio.to_thread(
        _anonymize, list(state["messages"]), dict(state.get("request") or {}), known
    )
    where = " (at the edge, before the run was stored)" if private.get("edge") else ""
    out = {
        "messages": messages,
        "private": {"mapping": seal(mapping, fernet), **({"edge": True} if private.get("edge") else {})},
        "notes": [f"privacy: replaced {_found(mapping)}{where}"],
    }
    if request is not None:
        out["request"] = request
    return out


async def post(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    private = state.get("private") or {}
    if private.get("edge"):  # the client's copy is restored as it leaves the server (`release`)
        return {"notes": ["privacy: the stored answer keeps its placeholders; the client's copy is restored"]}
    return {"answers": _restored(state.get("answers") or [], unseal(private, _fernet(runtime.context)))}


def _restored(answers: list[Answer], mapping: dict[str, str]) -> list[Answer]:
    out: list[Answer] = []
    for answer in answers:
        message = dict(answer.get("message") or {})
        if isinstance(message.get("content"), str):
            message["content"] = restore(message["content"], mapping)
        if isinstance(message.get("tool_calls"), list):
            message["tool_calls"] = [
                _map_arguments(c, lambda a: restore_json(a, mapping)) for c in message["tool_calls"]
            ]
        out.append({**answer, "message": message})
    return out


def stream(request: dict[str, Any], private: dict[str, Any], context: RunContext) -> Restorer | None:
    """The streamed text's Restorer; None (the wrapped part answers whole, `post` restores it) when the
    request offers tools, since streamed tool-call arguments do not pass through text rewriters."""
    if request.get("tools") or request.get("functions"):
        return None
    return Restorer(unseal(private, _fernet(context)))


SPEC = PluginSpec(
    name="privacy",
    description="Replaces personal data (e-mails, phones, cards, IBANs, IPs, SSNs, crypto and MAC addresses, person "
    "names) with placeholders before anything goes upstream, and restores them in the answer "
    "(streaming too).",
    pre=pre,
    post=post,
    stream=stream,
    admit=admit,
    release=release,
)
