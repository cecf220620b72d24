"""`autothink`: a thinking budget chosen per query, and activation steering towards careful reasoning.

After "AutoThink: efficient inference for reasoning LLMs" (Sharma, SSRN 5253327). OptILLM downloads
a query classifier (`adaptive-classifier/llm-router`, pip-installed at run time) and a dataset of
steering vectors for one model (Qwen3-0.6B). Here nothing is downloaded: both are built from the
loaded model itself, for any model.

1. Classification HIGH / LOW. The model reads `CLASSIFY_PROMPT` about the query and the assistant turn
   is prefilled with `CLASSIFY_PREFILL`; the log-probabilities of the label texts " HIGH" and " LOW"
   (all their tokens, teacher-forced) are compared. The same is done for a content-free query
   (`BASELINE_QUERY`) and its margin subtracted, which cancels the model's own label bias ("Calibrate
   Before Use", Zhao et al. 2021). A calibrated margin of at least `MODEL_MARGIN` nats either way
   decides; a weaker one falls back to a transparent heuristic: HIGH when the query is long or shows
   math, code or reasoning markers (`heuristic_complexity`). `complexity` high/low skips this step.
2. Thinking budget: HIGH 1024-4096 thinking tokens, LOW 256-1024 (OptILLM's), both scaled by
   min(1, max_tokens / 5120), 5120 being HIGH's maximum plus 1024 tokens for the answer; so with the
   CPU default max_tokens 1024: HIGH 205-819, LOW 51-205. Explicit `min_thinking_tokens` /
   `max_thinking_tokens` win.
3. Generation: the `thinkdeeper` budget-forcing loop, with ten switch phrases.
4. Steering (contrastive activation addition: Turner et al. 2023, "Activation Addition", arXiv
   2308.10248; Rimsky et al. 2024, "Steering Llama 2 via Contrastive Activation Addition"): for each
   pattern of `PATTERNS` (OptILLM's pattern names), the mean difference of the last-token hidden state
   at `target_layer` between an assistant turn that starts carefully and one that starts hastily,
   over the `STEERING_QUESTIONS`, computed per request on the loaded model (one batched forward pass).
   The vector added to that layer's output at every position during generation has the direction of
   the strength-weighted mean of the pattern vectors and a norm of `STEERING_SCALE` (0.1) times the
   layer's mean state norm times the mean strength (raw differences of such unlike prompts are as long
   as the states themselves and turn SmolLM2's output into noise); the hook is registered for the
   request only and always removed.

Parameters (OptILLM's body keys, then ours):
- `target_layer` (about 60% of the depth): the decoder layer steered, clamped to the model's layers
  (OptILLM's 19 becomes the last layer of a shallower model).
- `pattern_strengths` (1.0): a number for every pattern, or {pattern: strength} (patterns left out are
  off; unknown names are ignored); each clamped to [0, 2] (OptILLM clamps to [0.1, 2]).
- `steering_dataset`: accepted and ignored: vectors are derived locally, nothing is downloaded.
- `steering` (true): false turns steering off. `complexity` ("auto"): "high" / "low" skip step 1.
- `max_tokens`, `min_thinking_tokens`, `max_thinking_tokens`, `max_thoughts` (64),
  `thought_switch_tokens`, `prefill`, `start_think_token`, `end_think_token`: as in `thinkdeeper`.

`info`: the classification and its evidence, the budget, the steering layer and vector norm, and the
thinking loop's details. The text streams as in `thinkdeeper`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field

from optigraph.local.decoding.base import DecodeContext, Decoder, DecodeResult
from optigraph.local.decoding.thinkdeeper import (
    Phrase,
    ThinkingParams,
    make_plan,
    requested_max_tokens,
    result_of,
    think,
    thinking_prompt,
)

SWITCH_PHRASES = (
    "Wait,",
    "Alternatively,",
    "However,",
    "Additionally,",
    "Hmm,",
    "Actually,",
    "On second thought,",
    "Let me double-check:",
    "Let me verify this:",
    "Another way to see it:",
)
MAX_THOUGHTS = 64

CLASSIFY_PROMPT = (
    "Decide how much reasoning it takes to answer the request below well.\n"
    "HIGH: several steps of math, logic, code, analysis or planning.\n"
    "LOW: a fact, a definition, a greeting, a short rewrite or a simple lookup.\n\n"
    "Request:\n{query}\n\n"
    "Reply with one word: HIGH or LOW."
)
CLASSIFY_PREFILL = "Complexity:"
LABELS = {"HIGH": " HIGH", "LOW": " LOW"}
BASELINE_QUERY = "N/A"
MODEL_MARGIN = 1.0  # nats of calibrated log-probability margin for the model to decide
MAX_QUERY_CHARS = 4000  # of the query shown to the classifier
LONG_QUERY_CHARS = 400
HEURISTIC_MARKERS = {
    "math": re.compile(
        r"\d\s*[-+*/^=<>]\s*\d|\b(solve|prove|calculate|compute|equation|integral|derivative|"
        r"probability|how many|sum of|percent|theorem)\b",
        re.IGNORECASE,
    ),
    "code": re.compile(
        r"```|\bdef |\bclass |\b(function|algorithm|implement|code|bug|compile|regex|sql)\b", re.IGNORECASE
    ),
    "reasoning": re.compile(
        r"\b(why|explain|step by step|compare|analy[sz]e|derive|reason|plan|optimi[sz]e|"
        r"trade-?offs?|puzzle|riddle)\b",
        re.IGNORECASE,
    ),
}

BUDGETS = {"HIGH": (1024, 4096), "LOW": (256, 1024)}  # thinking tokens (min, max) at full scale
REFERENCE_MAX_TOKENS = 5120  # HIGH's 4096 thinking tokens plus 1024 for the answer: budgets at full scale

DEFAULT_LAYER_SHARE = 0.6  # of the depth
MAX_STRENGTH = 2.0
STEERING_SCALE = 0.1  # norm of the added vector at strength 1, as a fraction of the layer's mean state norm
DEFAULT_STRENGTH = 1.0
STEERING_QUESTIONS = (
    "What is 17 times 23?",
    "Is 221 a prime number?",
    "A train leaves at 9:40 and arrives at 13:05. How long is the trip?",
)
PATTERNS: dict[str, tuple[str, str]] = {  # pattern -> (careful start, hasty start) of the assistant turn
    "depth_and_thoroughness": (
        "Let me work through this carefully, step by step, and check each part.",
        "Quick answer, no need to think about it:",
    ),
    "numerical_accuracy": (
        "I will compute every number exactly and double-check the arithmetic.",
        "Roughly, at a glance, the number is about",
    ),
    "self_correction": (
        "Wait, let me re-check that step; I may have made a mistake.",
        "That is obviously right, no need to check it.",
    ),
    "exploration": (
        "Let me consider a few different approaches before choosing one.",
        "There is only one way to see it, so just",
    ),
    "organization": (
        "First, what is given. Second, what is asked. Then, the solution in order.",
        "Whatever, the answer is just",
    ),
}


class AutoThinkParams(ThinkingParams):
    thought_switch_tokens: tuple[Phrase, ...] = Field(
        SWITCH_PHRASES,
        min_length=1,
        max_length=64,
        description="Phrases forced when the model stops thinking too early (one drawn at random each time).",
    )
    complexity: Literal["auto", "high", "low"] = Field(
        "auto", description="auto: classify the query; high / low: use that budget without classifying."
    )
    steering: bool = Field(True, description="Add the locally derived steering vector during generation.")
    steering_dataset: str = Field("", description="Ignored: steering vectors are derived from the loaded model.")
    target_layer: int | None = Field(
        None,
        ge=0,
        description="Decoder layer steered (default: about 60% of the depth); clamped to the model's layers.",
    )
    pattern_strengths: float | dict[str, float] = Field(
        DEFAULT_STRENGTH,
        description="Steering strength for every pattern, or per pattern "
        f"({', '.join(PATTERNS)}); each clamped to [0, {MAX_STRENGTH}].",
    )


@dataclass(frozen=True)
class Classification:
    label: str  # "HIGH" or "LOW"
    source: str  # "model", "heuristic" or "forced"
    logprob_high: float | None = None  # log p(" HIGH" | query prompt), all label tokens
    logprob_low: float | None = None
    baseline_margin: float | None = None  # the same margin for the content-free query
    margin: float | None = None  # calibrated: (high - low) - baseline
    markers: tuple[str, ...] = ()  # what the heuristic found


# -- 1. classification ------------------------------------------------------------------------------


def query_text(messages: Sequence[dict[str, str]]) -> str:
    """The text classified: the last user message (else the last message)."""
    users = [m for m in messages if m.get("role") == "user"] or list(messages)
    return str(users[-1].get("content") or "") if users else ""


def heuristic_complexity(query: str) -> tuple[str, tuple[str, ...]]:
    """HIGH when the query is long or shows math, code or reasoning markers; the markers found."""
    found = tuple(name for name, pattern in HEURISTIC_MARKERS.items() if pattern.search(query))
    if len(query) > LONG_QUERY_CHARS:
        found += ("long",)
    return ("HIGH" if found else "LOW"), found


def label_logprobs(
    ctx: DecodeContext, prompts: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]
) -> list[list[float]]:
    """log p(label | prompt) summed over each label's tokens (teacher-forced), for every prompt x label,
    all rows in one batch: one prefill, then one step per label token."""
    import torch

    batch = ctx.prefill(prompts)
    rows = [(p, lab) for p in range(len(prompts)) for lab in range(len(labels))]
    batch.select([p for p, _ in rows])
    totals = [0.0] * len(rows)
    longest = max(len(label) for label in labels)
    for i in range(longest):
        logp = torch.log_softmax(batch.logits, dim=-1)
        for r, (_, lab) in enumerate(rows):
            if i < len(labels[lab]):
                totals[r] += float(logp[r, labels[lab][i]])
        if i + 1 < longest:  # a label already scored is padded; its later logits are not read
            batch.step([labels[lab][i] if i < len(labels[lab]) else ctx.lm.pad_id for _, lab in rows])
    return [totals[p * len(labels) : (p + 1) * len(labels)] for p in range(len(prompts))]


def classify(ctx: DecodeContext, query: str) -> tuple[Classification, int]:
    """The query's complexity with its evidence, and the prompt tokens it ran through the model."""
    lm = ctx.lm
    prompts = [
        lm.encode_chat([{"role": "user", "content": CLASSIFY_PROMPT.format(query=q)}], prefill=CLASSIFY_PREFILL)
        for q in (query[:MAX_QUERY_CHARS], BASELINE_QUERY)
    ]
    labels = [list(lm.tokenizer(LABELS[name], add_special_tokens=False)["input_ids"]) for name in ("HIGH", "LOW")]
    heuristic, markers = heuristic_complexity(query)
    if max(len(p) for p in prompts) + max(len(x) for x in labels) > lm.context:
        return Classification(label=heuristic, source="heuristic", markers=markers), 0  # too long for the model
    (high, low), (base_high, base_low) = label_logprobs(ctx, prompts, labels)
    margin = (high - low) - (base_high - base_low)
    if abs(margin) >= MODEL_MARGIN:
        label, source = ("HIGH" if margin > 0 else "LOW"), "model"
    else:
        label, source = heuristic, "heuristic"
    spent = sum(len(p) for p in prompts) + len(prompts) * len(labels) * (max(len(x) for x in labels) - 1)
    return Classification(
        label=label,
        source=source,
        logprob_high=high,
        logprob_low=low,
        baseline_margin=base_high - base_low,
        margin=margin,
        markers=markers,
    ), spent


# -- 2. budget --------------------------------------------------------------------------------------


def thinking_budget(label: str, max_tokens: int) -> tuple[int, int]:
    """(min, max) thinking tokens of a complexity class, scaled down when max_tokens is below 5120."""
    scale = min(1.0, max_tokens / REFERENCE_MAX_TOKENS)
    low, high = BUDGETS[label]
    return round(low * scale), max(1, round(high * scale))


# -- 4. steering ------------------------------------------------------------------------------------


def decoder_layers(model: Any) -> Any:
    """The model's list of decoder layers (through a peft wrapper): the ModuleList as long as the depth."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    depth = getattr(config, "num_hidden_layers", None) or getattr(
        getattr(config, "text_config", None), "num_hidden_layers", None
    )
    lists = [m for _, m in base.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    matching = [m for m in lists if len(m) == depth] or sorted(lists, key=len, reverse=True)
    if not matching:
        raise ValueError("cannot find the model's decoder layers for steering")
    return matching[0]


def layer_index(requested: int | None, depth: int) -> int:
    """The steered layer: the requested one (clamped to the model) or about 60% of the depth."""
    chosen = int(DEFAULT_LAYER_SHARE * depth) if requested is None else requested
    return max(0, min(chosen, depth - 1))


def pattern_weights(strengths: float | dict[str, float]) -> dict[str, float]:
    """Each pattern's strength, clamped to [0, MAX_STRENGTH]; patterns a dict leaves out are 0."""
    if isinstance(strengths, dict):
        return {p: max(0.0, min(MAX_STRENGTH, float(strengths.get(p, 0.0)))) for p in PATTERNS}
    return {p: max(0.0, min(MAX_STRENGTH, float(strengths))) for p in PATTERNS}


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def contrast_states(ctx: DecodeContext, layer: int, starts: Sequence[str]) -> tuple[Any, int]:
    """Last-token hidden states [len(starts) x questions, hidden] at the output of decoder `layer`, for
    each assistant-turn start after each steering question (start-major order), in one batch; and the
    prompt tokens that took."""
    import torch

    prompts = [
        ctx.lm.encode_chat([{"role": "user", "content": q}], prefill=start)
        for start in starts
        for q in STEERING_QUESTIONS
    ]
    captured: list[Any] = []
    handle = decoder_layers(ctx.lm.model)[layer].register_forward_hook(
        lambda module, args, output: captured.append(_hidden(output)[:, -1, :].detach().float())
    )
    try:
        ctx.prefill(prompts)  # left padded: position -1 is every row's last token
    finally:
        handle.remove()
    return torch.cat(captured, dim=0), sum(len(p) for p in prompts)


def steering_vector(ctx: DecodeContext, layer: int, weights: dict[str, float]) -> tuple[Any, int]:
    """The strength-weighted mean over patterns of (careful - hasty) mean last-token states at `layer`,
    and the prompt tokens it took; None when every strength is 0."""
    active = [p for p, w in weights.items() if w > 0]
    if not active:
        return None, 0
    starts = [s for p in active for s in PATTERNS[p]]
    states, spent = contrast_states(ctx, layer, starts)
    per = len(STEERING_QUESTIONS)
    vector = 0
    for i, pattern in enumerate(active):
        careful = states[(2 * i) * per : (2 * i + 1) * per].mean(dim=0)
        hasty = states[(2 * i + 1) * per : (2 * i + 2) * per].mean(dim=0)
        vector = vector + weights[pattern] * (careful - hasty)
    # Raw differences of prompts this unlike are as long as the hidden states themselves and wreck the
    # text; what is added is the direction, at STEERING_SCALE of the layer's typical state norm per unit
    # of strength.
    strength = sum(weights[p] for p in active) / len(active)
    typical = float(states.norm(dim=-1).mean())
    return vector / vector.norm().clamp(min=1e-6) * (STEERING_SCALE * typical * strength), spent


@contextmanager
def steered(model: Any, layer: int, vector: Any) -> Iterator[None]:
    """Adds `vector` to decoder `layer`'s output at every position while the block runs; always removed."""
    module = decoder_layers(model)[layer]
    weight = next(module.parameters())
    shift = vector.to(device=weight.device, dtype=weight.dtype)

    def add(mod: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + shift, *output[1:])
        return output + shift

    handle = module.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


Steering = tuple[AbstractContextManager[Any], dict[str, Any], int]  # what steers, its details, prompt tokens spent


def steering_for(ctx: DecodeContext, params: AutoThinkParams) -> Steering:
    """The context that steers generation (or does nothing), its details, and the prompt tokens it took."""
    if not params.steering:
        return nullcontext(), {"enabled": False}, 0
    depth = len(decoder_layers(ctx.lm.model))
    layer = layer_index(params.target_layer, depth)
    weights = pattern_weights(params.pattern_strengths)
    vector, spent = steering_vector(ctx, layer, weights)
    if vector is None:
        return nullcontext(), {"enabled": False, "strengths": weights}, spent
    details = {
        "enabled": True,
        "layer": layer,
        "layers": depth,
        "strengths": weights,
        "vector_norm": float(vector.norm()),
    }
    return steered(ctx.lm.model, layer, vector), details, spent


# -- the strategy -----------------------------------------------------------------------------------


def run(ctx: DecodeContext, params: AutoThinkParams) -> DecodeResult:
    prompt = thinking_prompt(ctx, params.start_think_token, params.prefill)
    max_tokens = min(requested_max_tokens(ctx, params), ctx.room(len(prompt)))
    extra_prompt = 0
    if params.complexity == "auto":
        classification, spent = classify(ctx, query_text(ctx.messages))
        extra_prompt += spent
    else:
        classification = Classification(label=params.complexity.upper(), source="forced")
    minimum, maximum = thinking_budget(classification.label, max_tokens)
    plan = make_plan(params, max_tokens, minimum, maximum, MAX_THOUGHTS)
    info: dict[str, Any] = {"classification": asdict(classification), **plan.describe()}
    if max_tokens < 1:
        return DecodeResult(text="", completion_tokens=0, finish_reason="length", info=info)
    context, info["steering"], spent = steering_for(ctx, params)
    extra_prompt += spent
    with context:
        outcome = think(ctx, plan, prompt)
    result = result_of(ctx, outcome, info)
    result.prompt_tokens += extra_prompt
    return result


DECODER = Decoder(
    name="autothink",
    params=AutoThinkParams,
    run=run,
    summary="AutoThink (SSRN 5253327): the model classifies the query HIGH/LOW (log-prob of the labels, calibrated; "
    "heuristic fallback) to set a thinking budget, then budget-forced thinking steered by a contrastive "
    "activation-addition vector derived on the model itself.",
    streams=True,
)
