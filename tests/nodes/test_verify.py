import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))

import pytest  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from scripted import ScriptedBackend, last_user  # noqa: E402

from optigraph.core.context import RunContext  # noqa: E402
from optigraph.core.judgments import parse_issues, parse_labelled_score, parse_verdict  # noqa: E402
from optigraph.core.llm import LLM, Budget  # noqa: E402
from optigraph.errors import BudgetExceeded, UpstreamError  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402
from optigraph.nodes.verify import VerifyState, feedback_of, verify, verify_each  # noqa: E402

QUESTION = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 6 x 7?"}]
CANDIDATES = [{"index": 0, "text": "42"}, {"index": 1, "text": "48"}, {"index": 2, "text": "6 x 7 = 42"}]


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Verdict: CORRECT", True),
        ("**Verdict: CORRECT**", True),
        ("Verdict: **INCORRECT**", False),
        ("**Verdict:** INCORRECT", False),
        ("Final verdict: the solution is correct.", True),
        ("Verdict: not correct", False),
        ("Verdict - FAIL", False),
        ("The solution is not correct.", False),
        ("The solution isn't correct.", False),
        ("The answer is not entirely correct.", False),
        ("The solution is correct.", True),
        ("This is partially correct.", False),
        ("incorrect", False),
        ("INCORRECT", False),
        ("Correct.", True),
        ("PASS", True),
        ("The final answer is right, but step 2 is wrong. Verdict: INCORRECT", False),
        ("Step 2 looks wrong at first, but checking again it holds.\nVerdict: CORRECT", True),
        ("<think>Verdict: CORRECT</think>Verdict: INCORRECT", False),
        ("Verdict: CORRECT or INCORRECT\nOn reflection the answer is wrong.", False),
        ("Issues: none\nScore: 9\nVerdict: CORRECT", True),
        ("I find the solution INCORRECT because of step 3.", False),
    ],
)
def test_loose_verdicts(reply, verdict):
    assert parse_verdict(reply) is verdict


@pytest.mark.parametrize("reply", ["", "Looks fine to me.", "Hmm.", "<think>Verdict: CORRECT</think>"])
def test_no_verdict_is_none(reply):
    assert parse_verdict(reply) is None


def test_scores_and_issues():
    report = "Step 1 ok.\n**Issues:**\n- step 2 drops a sign\n- no units\n**Score:** 3/10\nVerdict: INCORRECT"
    assert parse_issues(report) == ["step 2 drops a sign", "no units"]
    assert parse_labelled_score(report) == 3.0
    assert parse_issues("Issues: slip in step 3; answer not boxed\nScore: 2\nVerdict: INCORRECT") == [
        "slip in step 3",
        "answer not boxed",
    ]
    assert parse_issues("Issues: none\nScore: 9\nVerdict: CORRECT") == []
    assert parse_issues("Verdict: CORRECT") == []
    assert parse_labelled_score("Verdict: CORRECT") is None
    assert parse_labelled_score("Confidence: 8 out of 10\nVerdict: CORRECT") == 8.0


def test_feedback_collects_failed_checks_only():
    checks = [
        {"id": 0, "verdict": False, "issues": ["sign error"], "report": "..."},
        {"id": 0, "verdict": True, "issues": [], "report": "fine"},
        {"id": 0, "verdict": False, "issues": [], "report": "The last step is wrong."},
        {"id": 0, "verdict": None, "issues": [], "report": ""},
    ]
    assert feedback_of(checks) == "- sign error\n\nThe last step is wrong."
    assert feedback_of(checks[1:2]) == ""


def graph(passes: int = 1) -> StateGraph:
    g = StateGraph(VerifyState, context_schema=RunContext)
    g.add_node("verify", verify)
    g.add_conditional_edges(START, lambda s: verify_each(s, passes=passes), ["verify"])
    g.add_edge("verify", END)
    return g


async def run(backend, *, request=None, params=None, passes=1, budget=None):
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder(), budget=budget)
    state = {"messages": QUESTION, "request": request or {}, "params": params or {}, "candidates": CANDIDATES}
    return await graph(passes).compile().ainvoke(state, context=RunContext(run_id="t", llm=llm))


def by_candidate(body):
    prompt = last_user(body)
    return prompt.split("Proposed solution:\n", 1)[1].split("\n\nGo through", 1)[0]


async def test_each_candidate_is_checked_in_a_fresh_request():
    replies = {
        "42": "Fine.\nIssues: none\nScore: 9\nVerdict: CORRECT",
        "48": "Issues: 6 x 7 is 42\nScore: 1\nVerdict: INCORRECT",
        "6 x 7 = 42": "The solution is correct.",
    }
    backend = ScriptedBackend(lambda body: replies[by_candidate(body)])
    request = {"temperature": 0.9, "max_tokens": 50, "tools": [{"type": "function", "function": {"name": "f"}}]}
    state = await run(backend, request=request)
    got = {v["id"]: (v["verdict"], v["score"], v["issues"]) for v in state["verifications"]}
    assert got == {0: (True, 9.0, []), 1: (False, 1.0, ["6 x 7 is 42"]), 2: (True, None, [])}
    for body in backend.calls:
        assert body["messages"][0] == QUESTION[0]  # the system turn is kept
        assert "What is 6 x 7?" in last_user(body)
        assert body["temperature"] == 0.1 and body["max_tokens"] == 1024
        assert "tools" not in body and "n" not in body and "reasoning_effort" not in body
    assert state["usage"]["calls"] == 3


async def test_parameters_and_reasoning_effort():
    backend = ScriptedBackend(lambda body: "Verdict: CORRECT")
    params = {"verify_temperature": 0.3, "verify_max_tokens": None}
    await run(backend, request={"reasoning_effort": "high"}, params=params)
    for body in backend.calls:
        assert body["temperature"] == 0.3 and "max_tokens" not in body and body["reasoning_effort"] == "high"
        assert "reasoning" not in body


async def test_failed_and_unreadable_checks_are_none_and_noted():
    replies = {"42": UpstreamError("boom"), "48": "Looks fine to me.", "6 x 7 = 42": ""}
    state = await run(ScriptedBackend(lambda body: replies[by_candidate(body)]))
    assert {v["id"]: v["verdict"] for v in state["verifications"]} == {0: None, 1: None, 2: None}
    notes = "\n".join(state["notes"])
    assert "checking candidate 0 failed: boom" in notes
    assert "no verdict found for candidate 1" in notes and "no verdict found for candidate 2" in notes


async def test_passes_run_concurrently():
    backend = ScriptedBackend(lambda body: "Verdict: CORRECT", waves=[6])
    state = await run(backend, passes=2)
    assert backend.wave_errors == []  # all 6 checks in flight together
    assert len(state["verifications"]) == 6 and backend.max_in_flight == 6


async def test_budget_exceeded_propagates():
    backend = ScriptedBackend(lambda body: "Verdict: CORRECT")
    with pytest.raises(BudgetExceeded):
        await run(backend, budget=Budget(max_calls=2))
