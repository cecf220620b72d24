"""An approach that needs something the backend lacks is refused with a clear 400, before any call."""

from __future__ import annotations

from pathlib import Path

from api_stack import start_stack

from optigraph.core.spec import ApproachSpec
from optigraph.engine.registry import builtin_registry
from optigraph.graphs import none


def test_an_approach_needing_a_local_model_is_refused_on_an_http_upstream(tmp_path: Path) -> None:
    registry = builtin_registry()
    registry.add(
        ApproachSpec(
            name="logits_only", description="needs logits", build=none.build, needs=frozenset({"text", "local"})
        )
    )
    with start_stack(tmp_path / "n.db", registry=registry) as s:
        for model in ("logits_only-fake-model", "bon|logits_only-fake-model"):
            resp = s.http().post(
                "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
            )
            assert resp.status_code == 400, resp.text
            err = resp.json()["error"]
            assert err["code"] == "approach_unsupported" and err["param"] == "model"
            assert "logits_only" in err["message"] and "local" in err["message"]
        assert s.log.bodies == []
        listed = {a["id"]: a for a in s.http().get("/v1/models").json()["approaches"]}
        assert listed["logits_only"]["needs"] == ["local", "text"]
        assert listed["bon"]["needs"] == ["text"]


def test_decoding_in_the_body_is_refused_on_an_http_upstream_like_the_slug_form(stack) -> None:
    hi = [{"role": "user", "content": "hi"}]
    with stack.http() as http:
        slug = http.post("/v1/chat/completions", json={"model": "cot_decoding-fake-model", "messages": hi})
        assert slug.status_code == 400 and slug.json()["error"]["code"] == "approach_unsupported"
        for body in (
            {"model": "fake-model", "decoding": "cot_decoding"},
            {"model": "fake-model", "decoding": "cot_decoding", "stream": True},
            {"model": "bon-fake-model", "decoding": "entropy_decoding", "k": 3},
            {"model": "fake-model", "decoding": "no-such-strategy"},
        ):
            resp = http.post("/v1/chat/completions", json={**body, "messages": hi})
            assert resp.status_code == 400, resp.text
            err = resp.json()["error"]
            assert (err["code"], err["param"]) == ("approach_unsupported", "decoding")
            assert repr(body["decoding"]) in err["message"] and "needs local" in err["message"]
            assert "'openai'" in err["message"] and "fake-model" in err["message"]
        ok = http.post("/v1/chat/completions", json={"model": "fake-model", "decoding": "none", "messages": hi})
        assert ok.status_code == 200, ok.text
    assert len(stack.log.bodies) == 1  # only the last request reached the upstream


def test_logprobs_with_an_approach_is_refused_before_any_call(stack) -> None:
    hi = [{"role": "user", "content": "hi"}]
    with stack.http() as http:
        for model, stream in (("bon-fake-model", False), ("re2-fake-model", True), ("moa|bon-fake-model", False)):
            resp = http.post(
                "/v1/chat/completions", json={"model": model, "messages": hi, "logprobs": True, "stream": stream}
            )
            assert resp.status_code == 400, resp.text
            err = resp.json()["error"]
            assert (err["code"], err["param"]) == ("unsupported_parameter", "logprobs")
            assert repr(model.rsplit("-fake-model")[0]) in err["message"]
        assert stack.log.bodies == []
        for body in ({"model": "bon-fake-model", "logprobs": False}, {"model": "fake-model", "logprobs": True}):
            assert http.post("/v1/chat/completions", json={**body, "messages": hi}).status_code == 200
    assert stack.log.bodies[-1]["logprobs"] is True  # the passthrough forwards it
