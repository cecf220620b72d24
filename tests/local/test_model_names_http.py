"""Only the server's configuration chooses which local files load, over real HTTP: clients reach the
configured model and the models inside the models directory; any other name (absolute paths, `..`,
symlinks out of the directory, `.gguf` paths, adapters outside) is the same 404, byte for byte, whether
a file exists there or not. Beside an HTTP upstream, local models are reachable only when enabled."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from model_layout import Layout, make_layout, refused_adapters, refused_models
from tiny_model import TinyModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread, UpstreamLog, make_app

from optigraph.api.app import create_app
from optigraph.config import Settings

QUESTION = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module")
def layout(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return make_layout(tiny, tmp_path_factory.mktemp("names-http"))


def serve(layout: Layout, db: Path, **settings: Any) -> ServerThread:
    return ServerThread(
        create_app(
            Settings(
                local_model=layout.configured, local_models_dir=layout.models, db_url=f"sqlite:///{db}", **settings
            )
        )
    )


@pytest.fixture(scope="module")
def alone(layout: Layout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The server with no upstream: the local models serve."""
    with serve(layout, tmp_path_factory.mktemp("alone") / "o.db") as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ServerThread, UpstreamLog]]:
    log = UpstreamLog()
    with ServerThread(make_app(log=log)) as server:
        yield server, log


def post(server: ServerThread, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, "max_tokens": 1, "temperature": 0, **extra}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)


def as_local(name: str) -> str:
    """The name in a form the router sends to the local backend (plain names without an upstream are
    otherwise served by the default model)."""
    return name if "/" in name or name.endswith(".gguf") or name.startswith("~") else f"local/{name}"


def loaded_paths(server: ServerThread) -> list[str]:
    return [m["path"] for m in httpx.get(f"{server.url}/health", timeout=10).json()["local_models"]]


def test_models_the_configuration_offers_serve(alone: ServerThread, layout: Layout, tiny: TinyModel) -> None:
    for model in ("inside", "local/inside+lora-a", "nested/deeper", layout.configured, f"{layout.configured}+lora-a"):
        resp = post(alone, model)
        assert resp.status_code == 200, (model, resp.text)
        assert resp.json()["model"] == model and resp.json()["usage"]["completion_tokens"] == 1


def test_any_other_name_is_the_same_not_found(alone: ServerThread, layout: Layout) -> None:
    bodies: dict[str, bytes] = {}
    for name in map(as_local, refused_models(layout)):
        resp = post(alone, name)
        assert resp.status_code == 404, (name, resp.text)
        bodies[name] = resp.content
    assert len(set(bodies.values())) == 1, "the body must not depend on the name or on what exists there"
    error = httpx.Response(404, content=next(iter(bodies.values()))).json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("not_found_error", "model_not_found", "model")
    assert str(layout.outside) not in error["message"] and str(layout.models) not in error["message"]
    # a model that exists outside and one that does not, through each way out of the directory
    out = layout.outside
    for there, missing in (
        (str(out / "model"), str(out / "nothing")),
        ("../outside/model", "../outside/nothing"),
        ("local/escape", "local/nothing"),
        (str(out / "model.gguf"), str(out / "none.gguf")),
        ("escape.gguf", "missing.gguf"),
        ("local/escape-dir/model", "local/escape-dir/nothing"),
    ):
        assert post(alone, there).content == post(alone, missing).content, there
    streamed = post(alone, str(out / "model"), stream=True)
    assert streamed.status_code == 404 and streamed.content == bodies[str(out / "model")]
    assert all(
        Path(p).is_relative_to(layout.models.resolve()) or p == str(Path(layout.configured).resolve())
        for p in loaded_paths(alone)
    ), "nothing outside the models directory was loaded"


def test_adapters_outside_the_directory_are_the_same_not_found(alone: ServerThread, layout: Layout) -> None:
    bodies = set()
    for adapter in refused_adapters(layout):
        resp = post(alone, f"inside+{adapter}")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "adapter_not_found", (adapter, resp.text)
        bodies.add(resp.content)
    assert len(bodies) == 1


def test_beside_an_upstream_local_names_go_upstream(
    upstream: tuple[ServerThread, UpstreamLog], layout: Layout, tmp_path: Path
) -> None:
    up, log = upstream
    with serve(layout, tmp_path / "o.db", base_url=f"{up.url}/v1") as server:
        for model in (
            "inside",
            "local/inside",
            layout.configured,
            "smollm2",
            str(layout.outside / "model"),
            "escape.gguf",
            "local/../outside/model",
        ):
            before = len(log.bodies)
            resp = post(server, model)
            assert resp.status_code == 200, (model, resp.text)
            assert resp.json()["choices"][0]["message"]["content"].startswith("echo:")
            assert [b["model"] for b in log.bodies[before:]] == [model]
        assert loaded_paths(server) == []
        listed = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert layout.configured not in [m["id"] for m in listed]


def test_the_operator_may_enable_local_models_beside_an_upstream(
    upstream: tuple[ServerThread, UpstreamLog], layout: Layout, tmp_path: Path
) -> None:
    up, log = upstream
    with serve(layout, tmp_path / "o.db", base_url=f"{up.url}/v1", local_models_with_upstream=True) as server:
        before = len(log.bodies)
        for model in ("inside", "local/inside+lora-a", layout.configured, "local"):
            resp = post(server, model)
            assert resp.status_code == 200, (model, resp.text)
            assert resp.json()["usage"]["completion_tokens"] == 1
        assert len(log.bodies) == before, "local names were served here"
        refused = set()
        for model in (
            str(layout.outside / "model"),
            "../outside/model",
            "local/escape",
            "escape.gguf",
            "local/nothing",
            "~/model",
        ):
            resp = post(server, model)
            assert resp.status_code == 404, (model, resp.text)
            refused.add(resp.content)
        assert len(refused) == 1 and len(log.bodies) == before
        for model in ("fake-model", "nothing", "someone/some-model"):  # every other name goes upstream
            assert post(server, model).json()["choices"][0]["message"]["content"].startswith("echo:")
            assert log.bodies[-1]["model"] == model
        listed = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert layout.configured in [m["id"] for m in listed]
