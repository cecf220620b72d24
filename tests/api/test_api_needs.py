"""An approach that needs something the backend lacks is refused with a clear 400, before any call."""

from __future__ import annotations

from pathlib import Path

from api_stack import start_stack

from optigraph.core.spec import ApproachSpec
from optigraph.engine.registry import builtin_registry
from optigraph.graphs import none


def test_an_approach_needing_a_local_model_is_refused_on_an_http_upstream(tmp_path: Path) -> None:
    registry = builtin_registry()
    registry.add(ApproachSpec(name="logits_only", description="needs logits", build=none.build,
                              needs=frozenset({"text", "local"})))
    with start_stack(tmp_path / "n.db", registry=registry) as s:
        for model in ("logits_only-fake-model", "bon|logits_only-fake-model"):
            resp = s.http().post("/v1/chat/completions",
                                 json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert resp.status_code == 400, resp.text
            err = resp.json()["error"]
            assert err["code"] == "approach_unsupported" and err["param"] == "model"
            assert "logits_only" in err["message"] and "local" in err["message"]
        assert s.log.bodies == []
        listed = {a["id"]: a for a in s.http().get("/v1/models").json()["approaches"]}
        assert listed["logits_only"]["needs"] == ["local", "text"]
        assert listed["bon"]["needs"] == ["text"]
