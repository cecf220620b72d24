"""The scripted backend's wave gate: the tool that proves concurrency and rounds without a clock."""

import asyncio

from scripted import ScriptedBackend

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_concurrent_calls_fill_their_wave_and_dependent_ones_the_next():
    backend = ScriptedBackend(waves=[3, 1])
    first = await asyncio.gather(*(backend.complete(BODY) for _ in range(3)))
    await backend.complete({**BODY, "messages": [{"role": "user", "content": str(len(first))}]})
    assert backend.wave_errors == []
    assert backend.max_in_flight == 3 and len(backend.calls) == 4


async def test_calls_made_one_after_another_do_not_fill_a_wave():
    # the guard is short here only so that the failing case ends quickly; the verdict does not depend on it
    backend = ScriptedBackend(waves=[2], fill_guard_s=0.5)
    await backend.complete(BODY)
    await backend.complete(BODY)
    assert backend.wave_errors == ["wave 0: only 1 of 2 calls were in flight together (the rest waited for these)"]


async def test_a_call_that_did_not_wait_for_the_previous_wave_is_caught():
    backend = ScriptedBackend(waves=[1, 1])
    await asyncio.gather(backend.complete(BODY), backend.complete(BODY))
    assert backend.wave_errors == ["call 1 arrived before wave 0 was answered: it does not depend on that wave"]


async def test_calls_beyond_the_waves_are_reported():
    backend = ScriptedBackend(waves=[1])
    await backend.complete(BODY)
    await backend.complete(BODY)
    assert backend.wave_errors == ["call 1 is beyond the 1 expected waves"]
