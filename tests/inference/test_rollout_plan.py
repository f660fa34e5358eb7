"""A staged canary's plan, on the real planner, guard and VersionHealth with a controllable
clock: a step is taken only once its dwell has passed, the candidate has served the guard's
minimum of requests and the guard has no verdict; a step another front took first, or one
the registry refused, is not counted; the plan's tag form round-trips and bad plans are
refused by name."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aiml.errors import InvalidRequest
from aiml.inference.canary import Canary, Plan, RunningCanary, make_plan, parse_canary
from aiml.inference.guard import CanaryGuard, GuardLimits, GuardTrip
from aiml.inference.rollout_plan import RolloutPlanner
from aiml.observability.version_health import VersionHealth

PLAN = Plan((5, 25, 100), dwell_s=600, since=1000.0)
CANARY = RunningCanary("m", "production", stable=1, candidate=2, weight=5, plan=PLAN)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.health = VersionHealth(clock=self.clock)
        self.running = [CANARY]
        self.advanced: list[RunningCanary] = []
        self.answer: bool | Exception = True
        guard = CanaryGuard(self.health, lambda: self.running, self._trip, limits=GuardLimits())
        self.guard = guard
        self.planner = RolloutPlanner(
            self.health, guard, lambda: self.running, self._advance, clock=self.clock
        )

    async def _trip(self, trip: GuardTrip) -> None:
        raise AssertionError("no trip expected")

    async def _advance(self, canary: RunningCanary) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        self.advanced.append(canary)
        return self.answer

    def serve(self, version: int, n: int, status: int = 200) -> None:
        for _ in range(n):
            self.health.record(f"m/{version}", status, 0.05)


async def test_a_step_waits_for_its_dwell_then_for_traffic_then_is_taken_once_due() -> None:
    h = Harness()
    h.serve(1, 50)
    h.serve(2, 20)
    h.clock.now += 599
    assert "its dwell: 1 s more" in (h.planner.waiting_for(CANARY) or "")
    assert await h.planner.check() == []
    h.clock.now += 1 + 61  # past the dwell, and past the guard's 60 s window: no evidence
    assert "served 0 of the 10 requests" in (h.planner.waiting_for(CANARY) or "")
    assert await h.planner.check() == []
    h.serve(1, 50)
    h.serve(2, 10)
    steps = await h.planner.check()
    assert [(s.canary, s.weight) for s in steps] == [(CANARY, 25)]
    assert h.advanced == [CANARY]
    assert h.planner.report() == [
        {"name": "m", "alias": "production", "stable": 1, "candidate": 2, "from": 5, "to": 25,
         "promoted": False}
    ]  # fmt: skip


async def test_no_step_while_the_guard_has_a_verdict_or_the_canary_is_out() -> None:
    h = Harness()
    h.clock.now += 600
    h.serve(1, 50)
    h.serve(2, 20, status=502)
    assert h.planner.waiting_for(CANARY) == "the guard"
    assert await h.planner.check() == []
    out = replace(CANARY, weight=0)
    assert h.planner.waiting_for(out) == "the guard took it out"
    assert h.planner.waiting_for(replace(CANARY, plan=None)) == "no plan"
    assert h.advanced == []


async def test_past_the_last_step_the_candidate_is_promoted() -> None:
    h = Harness()
    last = replace(CANARY, weight=100)
    h.running = [last]
    h.clock.now += 600
    h.serve(2, 10)
    [step] = await h.planner.check()
    assert step.weight is None and h.planner.report()[0]["promoted"] is True


async def test_a_step_another_front_took_or_the_registry_refused_is_not_counted() -> None:
    h = Harness()
    h.clock.now += 600
    h.serve(2, 10)
    h.answer = False  # the registry held another step already
    assert await h.planner.check() == []
    h.answer = RuntimeError("the registry is down")
    assert await h.planner.check() == []
    assert h.planner.report() == []
    h.answer = True
    assert len(await h.planner.check()) == 1  # tried again on the next round


def test_a_plan_round_trips_through_its_tag() -> None:
    canary = Canary(7, 25, Plan((5, 25, 100), 600, 1765130000))
    assert canary.tag_value() == "7:25 plan=5,25,100 dwell=600 since=1765130000"
    assert Plan((5,), 60, 1.25).tag_suffix() == " plan=5 dwell=60 since=1.25"
    assert parse_canary(canary.tag_value()) == canary
    assert parse_canary("7:5") == Canary(7, 5)
    assert PLAN.after(5) == 25 and PLAN.after(25) == 100 and PLAN.after(100) is None


@pytest.mark.parametrize(
    "value",
    [
        "7:5 plan=25,5 dwell=600 since=1",  # not rising
        "7:5 plan=5,25,101 dwell=600 since=1",  # past 100
        "7:5 plan=0,25 dwell=600 since=1",  # a step of 0
        "7:5 plan=5,25 dwell=0 since=1",
        "7:5 plan=5,25 dwell=inf since=1",
        "7:5 plan=5,25 dwell=600 since=nan",
        "7:5 plan=5,25 dwell=600",  # no start
        "7:5 plan=5,x dwell=600 since=1",
        "7:5 dwell=600 since=1 extra=1",
    ],
)
def test_a_malformed_plan_is_no_canary(value: str) -> None:
    with pytest.raises(InvalidRequest, match="optionally followed by"):
        parse_canary(value)


@pytest.mark.parametrize(
    ("steps", "dwell", "param"), [([], 60, "plan"), ([50, 10], 60, "plan"), ([5], 0, "dwell_s")]
)
def test_a_bad_plan_asked_for_is_refused_by_name(
    steps: list[float], dwell: float, param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        make_plan(steps, dwell, 1000)
    assert refused.value.param == param
