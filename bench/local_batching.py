"""Local inference: batched vs sequential decoding, request batching, memory, streaming.

    python bench/local_batching.py                      # SmolLM2, 3 repeats of 64 tokens (6-9 minutes on 2 cores)
    python bench/local_batching.py --threads 2          # LocalBackend(threads=2): torch threads of the worker
    python bench/local_batching.py --repeats 5 --max-tokens 32
    python bench/local_batching.py --model ./my-hf-model-dir --model2 smollm2
    python bench/local_batching.py --json               # the same figures as one JSON object

Drives `optigraph.backends.local.LocalBackend` in-process (no HTTP), so the figures are the local
inference itself. One run measures, each case interleaved with the one it is compared to (the order
alternating between repeats) so that machine noise hits both alike; the tables give medians:

1. n samples at once: one request with `n` (default 8, temperature 1, a seed) against `n` requests with
   n=1 awaited one after another: completion tokens/s of each (tokens counted from
   `usage.completion_tokens`: a row may end early at its end-of-sequence token) and the ratio;
2. concurrent requests: `n` requests sent at once (asyncio.gather) to the default backend, whose worker
   batches what arrives within 5 ms (the `worker.batches` delta says how many batches ran), against the
   same requests with the worker's `max_batch_rows` set to 1 (each request decoded alone, as in a backend
   created with `max_batch_rows=1`): tokens/s, ratio and median per-request latency;
3. memory per loaded model: `backend.describe()` (resident MiB the load added, parameter MiB, load
   seconds); `--model2` loads a second model too;
4. streaming: time to the first content chunk of `LocalBackend.stream` against the stream's full time;
5. where decoding time goes (unless `--no-profile`): one forward step of the model and sampling a token,
   at 1 and at `n` rows, with 1 torch thread, with the worker's thread count and with one per core, and
   the detokenizer per token, timed on the worker thread.

One backend serves every case by default, as in the server. `--two-backends` runs the unbatched case on
a second LocalBackend created with `max_batch_rows=1` instead: it loads its own copy of the model and
has its own worker thread, and a second thread running torch gives the process a second OpenMP thread
pool, which made steps with 2 torch threads 1.6-1.9x slower on a 2-core machine (1 thread: 1.1-1.2x).
Load time is excluded from the timings, and each backend answers one short request before anything is
timed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. Describe the sea, "
    "the weather, the keeper's daily routine, and what the message says."
)


def body(args: argparse.Namespace, *, n: int = 1, seed: int = 0) -> dict[str, Any]:
    return {
        "model": args.model,
        "messages": [{"role": "user", "content": PROMPT}],
        "n": n,
        "temperature": 1.0,
        "seed": seed,
        "max_tokens": args.max_tokens,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def timed(make: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    result = await make()
    return time.perf_counter() - t0, result


def tokens(response: dict[str, Any]) -> int:
    return int(response["usage"]["completion_tokens"])


async def ready(backend: Any, model: str) -> float:
    """Loads the model (seconds) and answers one short request, so nothing later pays first-call costs."""
    t0 = time.perf_counter()
    await backend.warmup(model)
    loaded = time.perf_counter() - t0
    await backend.complete({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    return loaded


# ---- 1. n samples in one request vs n requests one after another -----------------------------------------


async def n_samples(backend: Any, args: argparse.Namespace, repeat: int) -> dict[str, Any]:
    seed = 1000 * (repeat + 1)

    async def batched() -> tuple[float, int]:
        elapsed, r = await timed(lambda: backend.complete(body(args, n=args.n, seed=seed)))
        return elapsed, tokens(r)

    async def sequential() -> tuple[float, int]:
        t0, count = time.perf_counter(), 0
        for i in range(args.n):
            count += tokens(await backend.complete(body(args, seed=seed + i)))
        return time.perf_counter() - t0, count

    out: dict[str, Any] = {}
    for name in ("batched", "sequential") if repeat % 2 == 0 else ("sequential", "batched"):
        elapsed, count = await (batched() if name == "batched" else sequential())
        out[name] = {"seconds": elapsed, "tokens": count, "tokens_per_s": count / elapsed}
    out["ratio"] = out["batched"]["tokens_per_s"] / out["sequential"]["tokens_per_s"]
    return out


# ---- 2. concurrent requests, batched by the worker or not ------------------------------------------------


async def concurrent(backend: Any, args: argparse.Namespace, seed: int, rows: int | None = None) -> dict[str, Any]:
    """`args.n` requests at once; `rows` sets the worker's max_batch_rows for this run (1: each alone)."""
    saved = backend.worker.max_batch_rows
    if rows is not None:
        backend.worker.max_batch_rows = rows
    try:
        before = backend.worker.batches
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(timed(lambda i=i: backend.complete(body(args, seed=seed + i))) for i in range(args.n))
        )
        wall = time.perf_counter() - t0
    finally:
        backend.worker.max_batch_rows = saved
    count = sum(tokens(r) for _, r in results)
    latencies = [elapsed for elapsed, _ in results]
    return {
        "seconds": wall,
        "tokens": count,
        "tokens_per_s": count / wall,
        "batches": backend.worker.batches - before,
        "latency_median_s": median(latencies),
        "latency_max_s": max(latencies),
    }


async def concurrency(batched: Any, unbatched: Any, args: argparse.Namespace, repeat: int) -> dict[str, Any]:
    seed = 1000 * (repeat + 1) + 500
    out: dict[str, Any] = {}
    for name in ("batched", "unbatched") if repeat % 2 == 0 else ("unbatched", "batched"):
        if name == "batched":
            out[name] = await concurrent(batched, args, seed)
        else:
            out[name] = await concurrent(unbatched, args, seed, rows=1 if unbatched is batched else None)
    out["ratio"] = out["batched"]["tokens_per_s"] / out["unbatched"]["tokens_per_s"]
    return out


# ---- 4. streaming: time to first token ----------------------------------------------------------------


async def streaming(backend: Any, args: argparse.Namespace, repeat: int) -> dict[str, Any]:
    request = {**body(args, seed=7 + repeat), "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    usage: dict[str, Any] = {}
    async for chunk in backend.stream(request):
        if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
            first = time.perf_counter() - t0
        usage = chunk.get("usage") or usage
    total = time.perf_counter() - t0
    return {
        "ttft_s": first if first is not None else total,
        "total_s": total,
        "tokens": int(usage.get("completion_tokens", 0)),
    }


# ---- 5. where decoding time goes ------------------------------------------------------------------------


def profile(lm: Any, rows_list: tuple[int, ...], threads_list: tuple[int, ...], steps: int) -> dict[str, Any]:
    """Runs on the worker thread: a forward step and sampling at each row count and torch thread count (the
    configurations take turns step by step, so noise hits them alike), and the detokenizer per token."""
    import torch

    from optigraph.local.batch import Batch
    from optigraph.local.sampling import Sampling, choose, make_generator
    from optigraph.local.text import Detokenizer

    prompt = lm.encode_chat([{"role": "user", "content": PROMPT}])
    default_threads = torch.get_num_threads()
    out: dict[str, Any] = {"prompt_tokens": len(prompt), "worker_torch_threads": default_threads, "threads": {}}
    generator = make_generator(0)
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            Batch.prefill(lm.model, [prompt], pad_id=lm.pad_id)
            out["prefill_ms"] = (time.perf_counter() - t0) * 1000.0
            configs = [(threads, rows) for threads in threads_list for rows in rows_list]
            batches, times = {}, {c: ([], []) for c in configs}
            for config in configs:
                batches[config] = Batch.prefill(lm.model, [prompt], pad_id=lm.pad_id)
                batches[config].select([0] * config[1])
            for _ in range(steps):
                for config in configs:
                    torch.set_num_threads(config[0])
                    batch = batches[config]
                    t0 = time.perf_counter()
                    chosen = choose(batch.logits, Sampling(), generator)
                    t1 = time.perf_counter()
                    batch.step(chosen)
                    t2 = time.perf_counter()
                    times[config][0].append(t2 - t1)
                    times[config][1].append(t1 - t0)
            for (threads, rows), (forward, sample) in times.items():
                out["threads"].setdefault(threads, {})[rows] = {
                    "forward_ms": median(forward) * 1000.0,
                    "sample_ms": median(sample) * 1000.0,
                }
    finally:
        torch.set_num_threads(default_threads)
    ids = lm.tokenizer(PROMPT * 4, add_special_tokens=False)["input_ids"]
    detok = Detokenizer(lm.tokenizer)
    t0 = time.perf_counter()
    for token in ids:
        detok.add(token)
    out["detokenize_us_per_token"] = (time.perf_counter() - t0) / len(ids) * 1e6
    return out


# ---- the run -------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import inspect

    import torch

    from optigraph.backends.local import LocalBackend

    options: dict[str, Any] = {"models_dir": args.models_dir, "dtype": args.dtype}
    if args.threads:
        if "threads" in inspect.signature(LocalBackend).parameters:
            options["threads"] = args.threads  # the worker sets it when its thread starts
        torch.set_num_threads(args.threads)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "loadavg_start": os.getloadavg(),
        },
        "settings": {
            "model": args.model,
            "n": args.n,
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "dtype": args.dtype,
            "two_backends": args.two_backends,
        },
    }
    say(f"loading {args.model}...")
    batched = LocalBackend(args.model, **options)
    load_batched = await ready(batched, args.model)
    report["machine"]["torch_threads"] = await batched.run(lambda lm: torch.get_num_threads(), args.model)
    if not args.two_backends:
        unbatched, load_unbatched = batched, 0.0
    else:
        say(f"loading {args.model} again (backend with max_batch_rows=1)...")
        unbatched = LocalBackend(args.model, max_batch_rows=1, **options)
        load_unbatched = await ready(unbatched, args.model)
    report["load_seconds"] = {"backend": load_batched, "second_backend": load_unbatched}

    results: dict[str, list[Any]] = {"n_samples": [], "concurrent": [], "streaming": []}
    for repeat in range(args.repeats):
        say(f"repeat {repeat + 1}/{args.repeats}: n={args.n} in one request vs one after another...")
        results["n_samples"].append(await n_samples(batched, args, repeat))
        say(f"repeat {repeat + 1}/{args.repeats}: {args.n} concurrent requests, batched vs not...")
        results["concurrent"].append(await concurrency(batched, unbatched, args, repeat))
        say(f"repeat {repeat + 1}/{args.repeats}: streaming...")
        results["streaming"].append(await streaming(batched, args, repeat))
    report["runs"] = results

    def med(part: str, *keys: str) -> float:
        values = []
        for r in results[part]:
            for k in keys:
                r = r[k]
            values.append(r)
        return median(values)

    report["summary"] = {
        "n_samples": {
            "batched_tokens_per_s": med("n_samples", "batched", "tokens_per_s"),
            "sequential_tokens_per_s": med("n_samples", "sequential", "tokens_per_s"),
            "ratio": med("n_samples", "ratio"),
            "batched_tokens": med("n_samples", "batched", "tokens"),
            "sequential_tokens": med("n_samples", "sequential", "tokens"),
        },
        "concurrent": {
            "batched_tokens_per_s": med("concurrent", "batched", "tokens_per_s"),
            "unbatched_tokens_per_s": med("concurrent", "unbatched", "tokens_per_s"),
            "ratio": med("concurrent", "ratio"),
            "batched_batches": med("concurrent", "batched", "batches"),
            "unbatched_batches": med("concurrent", "unbatched", "batches"),
            "batched_latency_median_s": med("concurrent", "batched", "latency_median_s"),
            "unbatched_latency_median_s": med("concurrent", "unbatched", "latency_median_s"),
        },
        "streaming": {
            "ttft_s": med("streaming", "ttft_s"),
            "total_s": med("streaming", "total_s"),
            "tokens": med("streaming", "tokens"),
        },
    }
    if args.profile:
        say("profiling one decoding step...")
        threads = tuple(sorted({1, report["machine"]["torch_threads"], os.cpu_count() or 1}))
        report["profile"] = await batched.run(
            lambda lm: profile(lm, (1, args.n), threads, args.profile_steps), args.model
        )
    if args.model2:
        say(f"loading {args.model2}...")
        await ready(batched, args.model2)
    report["memory"] = {
        "backend": batched.describe(),
        "second_backend": [] if unbatched is batched else unbatched.describe(),
    }
    report["machine"]["loadavg_end"] = os.getloadavg()
    for backend in {id(b): b for b in (batched, unbatched)}.values():
        await backend.aclose()
        thread = getattr(backend.worker, "_thread", None)  # let the worker thread end before the interpreter does
        if thread is not None:
            await asyncio.to_thread(thread.join, 30.0)
    return report


def show(report: dict[str, Any]) -> None:
    m, s, summary = report["machine"], report["settings"], report["summary"]
    n = s["n"]
    print(f"optigraph local inference benchmark  {report['date']}")
    print(
        f"machine: nproc={m['nproc']}  Python {m['python']}  torch {m['torch']}  torch threads {m['torch_threads']}"
        f"  load average {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}"
    )
    print(
        f"model {s['model']} ({s['dtype']}), max_tokens {s['max_tokens']}, temperature 1, "
        f"median of {s['repeats']} repeats, unbatched case on "
        + ("a second backend" if s.get("two_backends") else "the same backend with max_batch_rows=1")
    )
    print()
    ns, cc = summary["n_samples"], summary["concurrent"]
    print(f"{'case':46}{'tokens':>8}{'tok/s':>9}{'ratio':>8}")
    print("-" * 71)
    print(f"{f'one request, n={n}':46}{ns['batched_tokens']:8.0f}{ns['batched_tokens_per_s']:9.2f}{ns['ratio']:8.2f}")
    print(
        f"{f'{n} requests n=1, one after another':46}{ns['sequential_tokens']:8.0f}"
        f"{ns['sequential_tokens_per_s']:9.2f}{1:8.2f}"
    )
    print(
        f"{f'{n} concurrent requests, batched':46}{'':8}{cc['batched_tokens_per_s']:9.2f}{cc['ratio']:8.2f}"
        f"   batches {cc['batched_batches']:.0f}, latency median {cc['batched_latency_median_s']:.2f} s"
    )
    print(
        f"{f'{n} concurrent requests, max_batch_rows=1':46}{'':8}{cc['unbatched_tokens_per_s']:9.2f}{1:8.2f}"
        f"   batches {cc['unbatched_batches']:.0f}, latency median {cc['unbatched_latency_median_s']:.2f} s"
    )
    print("-" * 71)
    print(
        "per repeat, ratio n-samples / concurrent: "
        + ", ".join(
            f"{a['ratio']:.2f} / {b['ratio']:.2f}"
            for a, b in zip(report["runs"]["n_samples"], report["runs"]["concurrent"])
        )
    )
    st = summary["streaming"]
    print(
        f"streaming one request: first token {st['ttft_s'] * 1000:.0f} ms, whole stream {st['total_s']:.2f} s "
        f"({st['tokens']:.0f} tokens)"
    )
    print()
    print(f"{'loaded model':28}{'resident MiB':>14}{'parameter MiB':>15}{'load s':>9}")
    for where, models in report["memory"].items():
        for model in models:
            label = os.path.basename(model["id"].rstrip("/"))[:16] + (
                " (2nd copy)" if where == "second_backend" else ""
            )
            print(f"{label:28}{model['resident_mib']:14.1f}{model['parameter_mib']:15.1f}{model['load_seconds']:9.1f}")
    if "profile" in report:
        p = report["profile"]
        print()
        print(
            f"one decoding step ({p['prompt_tokens']}-token prompt, prefill {p['prefill_ms']:.0f} ms with "
            f"{p['worker_torch_threads']} torch threads), median ms, the configurations taking turns:"
        )
        print(f"{'threads':>8}{'rows':>6}{'forward':>10}{'sample':>9}{'per row':>10}")
        for threads, by_rows in p["threads"].items():
            for rows, r in by_rows.items():
                per_row = (r["forward_ms"] + r["sample_ms"]) / int(rows)
                print(f"{threads:>8}{rows:>6}{r['forward_ms']:10.1f}{r['sample_ms']:9.1f}{per_row:10.1f}")
        print(f"detokenizer: {p['detokenize_us_per_token']:.0f} us per token")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="local model name: smollm2, a .gguf file or a model directory")
    p.add_argument(
        "--model2",
        help="a second local model to load, for its memory figures: a built-in name or a "
        "name inside --models-dir (requests may name nothing else)",
    )
    p.add_argument(
        "--models-dir",
        type=lambda v: __import__("pathlib").Path(v),
        help="the models directory: where --model2 and relative names are looked up",
    )
    p.add_argument("--dtype", default="float32", help="dtype the models load in (default float32)")
    p.add_argument("--n", type=int, default=8, help="samples per request / concurrent requests (default 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every timed request (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each comparison (default 3)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads of the local worker (default: LocalBackend's default)"
    )
    p.add_argument(
        "--two-backends",
        action="store_true",
        help="run the unbatched case on a second LocalBackend(max_batch_rows=1), a second model copy",
    )
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the per-step timing")
    p.add_argument("--profile-steps", type=int, default=16, help="decoding steps timed per row count (default 16)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (progress goes to stderr)")
    args = p.parse_args()
    import warnings

    warnings.filterwarnings("ignore")  # transformers' deprecation notices, once per run
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
