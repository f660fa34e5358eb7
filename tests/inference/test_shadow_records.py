"""A shadow's copy is told to its recorder (its trace) however it ends: the candidate's answer
and 200, or no answer and the failure's status; a recorder that breaks breaks nothing."""

from __future__ import annotations

from typing import Any

from aiml.errors import ModelNotFound
from aiml.inference.shadow import Answer, ShadowTraffic


async def _run(copy: Any, record: Any) -> ShadowTraffic:
    shadow = ShadowTraffic()
    assert shadow.offer("m@prod -> 2", Answer("hi", tokens=3), 0.1, copy, record)
    await shadow.settled()
    return shadow


async def test_an_answered_copy_is_recorded_with_its_answer() -> None:
    told: list[tuple[Answer | None, float, int]] = []

    async def copy() -> Answer:
        return Answer("hi", tokens=5)  # the same text; the tokens are not compared

    shadow = await _run(copy, lambda *args: told.append(args))
    ((answer, seconds, status),) = told
    assert (answer, status) == (Answer("hi", tokens=5), 200) and seconds >= 0
    assert shadow.report()["m@prod -> 2"]["matched"] == 1


async def test_a_failed_copy_is_recorded_with_its_status() -> None:
    told: list[tuple[Answer | None, float, int]] = []

    async def copy() -> Answer:
        raise ModelNotFound("no version 2")

    shadow = await _run(copy, lambda *args: told.append(args))
    assert [(a, status) for a, _, status in told] == [(None, 404)]
    assert shadow.report()["m@prod -> 2"]["failed"] == 1


async def test_a_recorder_that_fails_changes_nothing() -> None:
    def record(*_: Any) -> None:
        raise RuntimeError("the exporter broke")

    async def copy() -> Answer:
        return Answer("other")

    shadow = await _run(copy, record)
    assert shadow.report()["m@prod -> 2"]["compared"] == 1
