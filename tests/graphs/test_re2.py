import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

from scripted import ScriptedBackend, run_approach  # noqa: E402

from optigraph.core.streaming import StreamSink  # noqa: E402
from optigraph.graphs.re2 import SPEC  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 6 times 7?"},
]


async def test_one_call_with_the_question_read_twice():
    backend = ScriptedBackend(lambda body: "42")
    state, _ = await run_approach(SPEC, MESSAGES, backend, request={"temperature": 0.3, "stop": ["\n\n"]})
    assert len(backend.calls) == 1
    sent = backend.calls[0]
    assert sent["messages"][0] == MESSAGES[0]
    assert sent["messages"][1] == {
        "role": "user",
        "content": "What is 6 times 7?\nRead the question again: What is 6 times 7?",
    }
    assert sent["temperature"] == 0.3 and sent["stop"] == ["\n\n"]
    assert state["answers"][0]["message"] == {"role": "assistant", "content": "42"}
    expected = backend.total_usage()
    assert {k: state["usage"][k] for k in expected} == expected


async def test_streams_the_answer():
    sink = StreamSink()
    backend = ScriptedBackend(lambda body: "forty two")
    state, _ = await run_approach(SPEC, MESSAGES, backend, sink=sink, stream_choice=0)
    assert backend.calls[0]["stream"] is True
    assert sink.streamed == {0}
    assert state["answers"][0]["message"]["content"] == "forty two"
    assert state["usage"]["completion_tokens"] == 2


def test_spec():
    assert (SPEC.calls, SPEC.rounds, SPEC.streams_final) == ("1", "1", True)
    assert SPEC.papers == ("arXiv:2309.06275",)
