"""The pieces behind OptILLM plugin files: OptILLM's flattening of the conversation, what a plugin may
return, the client's response objects, the client refusing calls it cannot make, and which files load."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from optigraph.core.sync_client import ClientClosed, Record, SyncChatClient, response_object
from optigraph.engine.loading import load_registry
from optigraph.engine.optillm_plugins import answer_text, flatten, load_plugins
from optigraph.errors import ApproachLoadError, PluginFailed


def test_the_conversation_is_flattened_the_way_optillm_does_it() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": "hello"},
        {"role": "tool", "content": "ignored", "tool_call_id": "x"},
        {"role": "user", "content": "what now?"},
    ]
    assert flatten(messages) == ("be brief", "User: hi\nAssistant: hello\nUser: what now?")
    assert flatten([{"role": "user", "content": "q"}]) == ("", "User: q")


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (("answer", 12), "answer"),
        ("bare text", "bare text"),
        (({"choices": [{"message": {"content": "from a document"}}], "usage": {}}, 0), "from a document"),
        ((["first", "second"], 3), "first"),
    ],
)
def test_what_a_plugin_may_return(result: object, text: str) -> None:
    assert answer_text("p", result) == text


@pytest.mark.parametrize("result", [None, (42, 1), ({"choices": []}, 0), ([], 0)])
def test_anything_else_fails_the_run_naming_the_plugin(result: object) -> None:
    with pytest.raises(PluginFailed) as info:
        answer_text("odd", result)
    assert "plugin 'odd' returned" in info.value.message and info.value.status == 502


def test_records_read_like_the_sdks_objects() -> None:
    record = Record({"choices": [{"message": {"content": "hi", "role": "assistant"}}], "usage": {"total_tokens": 3}})
    assert record.choices[0].message.content == "hi" and record.usage.total_tokens == 3
    assert record.choices[0].message.tool_calls is None  # an absent optional field reads as None
    assert record["usage"]["total_tokens"] == 3
    assert (
        record.model_dump()
        == record.dict()
        == {
            "choices": [{"message": {"content": "hi", "role": "assistant"}}],
            "usage": {"total_tokens": 3},
        }
    )


def test_a_document_the_sdk_type_refuses_is_still_readable() -> None:
    document = {"id": "x", "object": "chat.completion", "created": "not a time", "model": "m", "choices": []}
    obj = response_object(document)
    assert isinstance(obj, Record) and obj.model == "m"
    good = response_object({**document, "created": 1})
    assert type(good).__name__ == "ChatCompletion" and good.model_dump()["model"] == "m"


def test_the_client_refuses_streams_and_calls_after_its_run() -> None:
    llm = SimpleNamespace(model="m", run_id="r")
    client = SyncChatClient(llm, loop=None, node="p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream=True"):
        client.chat.completions.create(model="m", messages=[], stream=True)
    client.close()
    with pytest.raises(ClientClosed):
        client.chat.completions.create(model="m", messages=[])


def test_which_files_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "good.py").write_text('SLUG = "good"\n\ndef run(s, q, client, model):\n    return q, 0\n')
    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\n")
    (tmp_path / "helper.py").write_text("X = 1\n")
    (tmp_path / "_private.py").write_text('SLUG = "private"\n\ndef run(*a):\n    return "", 0\n')
    (tmp_path / "moa_plugin.py").write_text('SLUG = "moa"\n\ndef run(*a):\n    return "", 0\n')
    with caplog.at_level(logging.WARNING, logger="optigraph.plugins"):
        loaded = load_plugins(tmp_path, taken={"moa"}.__contains__)
    assert [spec.name for spec, _ in loaded] == ["good"]
    said = caplog.text
    assert "broken.py" in said and "ModuleNotFoundError" in said
    assert "helper.py" in said and "'moa' is a built-in" in said
    registry = load_registry(plugins_dir=tmp_path, entry_points=False)
    assert "OptILLM plugin file" in registry.get("good").description
    assert "OptILLM plugin file" not in registry.get("moa").description  # the built-in moa serves the name
    (tmp_path / "again.py").write_text('SLUG = "good"\n\ndef run(*a):\n    return "", 0\n')
    with pytest.raises(ApproachLoadError, match="already registered"):
        load_registry(plugins_dir=tmp_path, entry_points=False)
    with pytest.raises(ApproachLoadError, match="does not exist"):
        load_registry(plugins_dir=tmp_path / "missing", entry_points=False)


def test_a_call_waiting_when_its_run_ends_gives_up() -> None:
    client = SyncChatClient(SimpleNamespace(model="m", run_id="r"), loop=None, node="p")  # type: ignore[arg-type]
    never: concurrent.futures.Future = concurrent.futures.Future()  # a loop that will not answer
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            client._wait(never)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    client.close()
    thread.join(timeout=30)
    assert not thread.is_alive() and isinstance(outcome[0], ClientClosed)
    assert never.cancelled()
