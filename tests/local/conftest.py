"""Fixtures: a tiny random-weight model with two LoRA adapters, built once per test session."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_model import TinyModel, build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_lm(tiny: TinyModel) -> Any:
    """The tiny model loaded (no adapters): a LoadedModel."""
    from optigraph.local.models import load_model, resolve_base

    return load_model(resolve_base(str(tiny.path)))


@pytest.fixture
def make_context(tiny_lm: Any):
    """Builds a DecodeContext for a user message on the tiny model."""
    from optigraph.local.decoding.base import DecodeContext
    from optigraph.local.sampling import Sampling, make_generator

    def make(
        content: str = "What is two plus two?",
        *,
        max_tokens: int | None = 24,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        explicit: frozenset[str] = frozenset(),
        emit: Any = None,
    ) -> DecodeContext:
        messages = [{"role": "user", "content": content}]
        return DecodeContext(
            lm=tiny_lm,
            messages=messages,
            prompt=tiny_lm.encode_chat(messages),
            adapter=None,
            max_tokens=max_tokens,
            sampling=Sampling(temperature=temperature, top_p=top_p),
            generator=make_generator(seed),
            cancel=threading.Event(),
            emit=emit,
            explicit=explicit,
        )

    return make


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Any:
    """The tiny model's matrices are far too small to gain from several threads, and on a busy machine
    OpenMP threads that spin-wait for each other make every op milliseconds slow. Restored after each module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_backend(tiny: TinyModel) -> Any:
    """A LocalBackend whose default model is the tiny model directory; its models directory holds the adapters
    (`lora-a`, `lora-b`), which requests may add by name.
    The worker settles results on whichever event loop asked, so every test may use its own loop."""
    from optigraph.backends.local import LocalBackend

    backend = LocalBackend(str(tiny.path), models_dir=tiny.path.parent, batch_window_ms=20)
    yield backend
    backend.worker.close()


@pytest.fixture(scope="session")
def tiny_peft(tiny: TinyModel) -> Any:
    """A reference peft model: a fresh load of the tiny model with both adapters (lora-a, lora-b), for
    direct forward passes to compare the backend against. Switch with `set_adapter` / `disable_adapter`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny.path), dtype="float32").eval()
    model = PeftModel.from_pretrained(base, str(tiny.adapters["lora-a"]), adapter_name="lora-a")
    model.load_adapter(str(tiny.adapters["lora-b"]), adapter_name="lora-b")
    return model.eval()


class RowCounter:
    """Records the batch size (rows) of every forward pass of a model: evidence of what ran together,
    without replacing anything (a forward pre-hook on the inner decoder, which peft calls too)."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.handle: Any = None

    def attach(self, lm: Any) -> None:
        model = lm.model.get_base_model() if hasattr(lm.model, "get_base_model") else lm.model

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.rows.append(int(ids.shape[0]))

        self.handle = model.model.register_forward_pre_hook(hook, with_kwargs=True)

    def detach(self, _lm: Any = None) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


@pytest.fixture
def row_counter_type() -> type[RowCounter]:
    """The RowCounter class, for tests that attach one elsewhere (a server's own backend)."""
    return RowCounter


@pytest.fixture
async def row_counter(tiny_backend: Any) -> Any:
    """A RowCounter on the tiny backend's default model (attached and removed on the worker thread)."""
    counter = RowCounter()
    await tiny_backend.run(counter.attach)
    yield counter
    await tiny_backend.run(counter.detach)


@pytest.fixture(scope="module")
def server(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The whole app over real HTTP on loopback, serving the tiny model, with its directory (the model and
    both adapters) as the models directory (one per test module)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from upstream import ServerThread

    from optigraph.api.app import create_app
    from optigraph.config import Settings

    db = tmp_path_factory.mktemp("tiny-server") / "optigraph.db"
    with ServerThread(
        create_app(Settings(local_model=str(tiny.path), local_models_dir=tiny.path.parent, db_url=f"sqlite:///{db}"))
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    """The official openai client on `server`."""
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
