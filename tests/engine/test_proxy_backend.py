"""The proxy backend's policy on a controllable clock: smooth weighted round-robin, cooldown after a
failure and the probe that ends it, capped jittered backoff, which errors fail over, concurrency
slots, models per provider, and the config file's checks."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread, make_app  # noqa: E402

from optigraph.backends.proxy import ProxyBackend, ProxyConfig, load_proxy_config  # noqa: E402
from optigraph.errors import NotFound, ProxyConfigError, UpstreamError, UpstreamTimeout  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def proxy(*providers: dict, clock: Clock | None = None, **policy: object) -> ProxyBackend:
    config = ProxyConfig.model_validate({"providers": list(providers), "health_check_interval_s": 0, **policy})
    return ProxyBackend(config, clock=clock or Clock(), rng=random.Random(7))


def names(backend: ProxyBackend, k: int, model: str = "m") -> list[str]:
    return [backend.pick(model).name for _ in range(k)]


A = {"name": "a", "base_url": "http://127.0.0.1:9/v1", "weight": 3}
B = {"name": "b", "base_url": "http://127.0.0.1:9/v1", "weight": 1}


def test_smooth_weighted_round_robin() -> None:
    assert names(proxy(A, B), 8) == ["a", "a", "b", "a"] * 2


async def _fail(backend: ProxyBackend, exc: UpstreamError, tried: list[str] | None = None) -> str:
    with pytest.raises(UpstreamError):
        async with backend.lease("m", tried or []) as target:
            raise exc
    return target.name


async def test_a_failed_provider_cools_down_then_comes_back() -> None:
    clock = Clock()
    backend = proxy(A, B, clock=clock, cooldown_s=30)
    assert await _fail(backend, UpstreamError("boom", upstream_status=500)) == "proxy:a"
    assert names(backend, 4) == ["b"] * 4  # a is skipped while it cools down
    clock.now += 30
    assert "a" in names(backend, 4)
    async with backend.lease("m") as target:  # a success marks it up at once
        pass
    assert target.name.startswith("proxy:")


async def test_when_all_are_down_the_first_to_come_back_is_tried() -> None:
    clock = Clock()
    backend = proxy(A, B, clock=clock, cooldown_s=30)
    await _fail(backend, UpstreamTimeout("slow"))  # a, down until 130
    clock.now += 10
    await _fail(backend, UpstreamError("429", upstream_status=429))  # b, down until 140
    assert names(backend, 2) == ["a", "a"]


async def test_a_request_error_does_not_mark_the_provider_down() -> None:
    backend = proxy(A, B, cooldown_s=30)
    error = UpstreamError("bad request", upstream_status=400)
    assert not backend.fails_over(error)
    await _fail(backend, error)
    assert backend.providers[0].down_until == 0.0


def test_retries_go_to_providers_not_tried_yet() -> None:
    backend = proxy(A, B)
    assert backend.pick("m", ["proxy:a"]).name == "b"
    assert backend.pick("m", ["proxy:a", "proxy:b"]).name in ("a", "b")  # all tried: start over


def test_backoff_is_jittered_under_a_capped_exponential() -> None:
    backend = proxy(A, backoff_s=0.5, backoff_max_s=3.0)
    waits = {k: [backend.backoff_s(k) for _ in range(200)] for k in (1, 2, 3, 10)}
    assert all(0 <= w <= 0.5 for w in waits[1]) and all(0 <= w <= 1.0 for w in waits[2])
    assert all(0 <= w <= 3.0 for w in waits[10]) and max(waits[10]) > 2.0  # capped, not exponential
    assert len(set(waits[3])) > 100  # jittered


def test_models_per_provider_and_a_404_for_the_rest() -> None:
    backend = proxy({**A, "models": ["big"]}, {**B, "models": ["small"]})
    assert names(backend, 3, "small") == ["b"] * 3
    with pytest.raises(NotFound) as caught:
        backend.check_model("huge")
    assert caught.value.code == "model_not_found"


async def test_a_full_provider_is_passed_over_while_another_has_a_slot() -> None:
    backend = proxy({**A, "max_concurrency": 1}, B)
    async with backend.lease("m") as first:
        assert first.name == "proxy:a"
        assert names(backend, 3) == ["b"] * 3  # a's only slot is taken


async def test_the_probe_revives_a_provider_that_answers() -> None:
    clock = Clock()
    with ServerThread(make_app()) as up:
        backend = proxy({**A, "base_url": up.url + "/v1"}, {**B, "base_url": "http://127.0.0.1:9/v1"}, clock=clock)
        await _fail(backend, UpstreamError("boom", upstream_status=503))
        await _fail(backend, UpstreamError("boom", upstream_status=503))
        assert await backend.probe() == ["a"]  # b's address has nothing listening
        assert backend.providers[0].down_until == 0.0 and backend.providers[1].down_until > clock.now
        await backend.aclose()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("providers: []", "providers"),
        ("providers:\n  - {name: a, base_url: 'http://x/v1', weight: 0}", "providers.0.weight"),
        ("providers:\n  - {name: a, base_url: 'ftp://x'}", "providers.0.base_url"),
        ("providers:\n  - {name: a, base_url: 'http://x/v1', key: s}", "providers.0.key"),
        ("providers:\n  - {name: a, base_url: 'http://x/v1'}\n  - {name: a, base_url: 'http://y/v1'}", "unique"),
        ("providers: [\n", "cannot read it"),
    ],
)
def test_a_malformed_config_names_the_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ProxyConfigError) as caught:
        load_proxy_config(path)
    assert str(path) in caught.value.message and where in caught.value.message
