"""Tests of the pure reconcile policy ``decide``, with plain sets and frozen instances."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from azmanagers.cluster.policy import Decision, Failure, decide
from azmanagers.providers.base import Instance, InstanceState

RUNNING = InstanceState.RUNNING
CREATING = InstanceState.CREATING
STOPPED = InstanceState.STOPPED
FAILED = InstanceState.FAILED
DELETING = InstanceState.DELETING

NOW = 1000.0
TIMEOUT_S = 60.0


def inst(
    ident: str,
    state: InstanceState = RUNNING,
    created_at: float = NOW - 1,
    exit_status: int | None = None,
) -> Instance:
    return Instance(pool="p", id=ident, state=state, created_at=created_at, exit_status=exit_status)


def run(
    instances: Iterable[Instance],
    *,
    target: int,
    joined: Iterable[str] = (),
    ever_joined: Iterable[str] | None = None,
    removing: Iterable[str] = (),
    now: float = NOW,
    budget: int = 3,
) -> Decision:
    joined_set = set(joined)
    ever = joined_set | set(ever_joined or ())
    return decide(
        list(instances),
        target=target,
        joined=joined_set,
        ever_joined=ever,
        removing=set(removing),
        now=now,
        join_timeout_s=TIMEOUT_S,
        replacements_left=budget,
    )


@dataclass
class Case:
    name: str
    instances: list[Instance]
    target: int
    joined: set[str] = field(default_factory=set)
    ever_joined: set[str] = field(default_factory=set)
    removing: set[str] = field(default_factory=set)
    budget: int = 3
    # expectations
    failed: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    retire: int = 0
    capacity: int = 0
    create: int = 0
    unreplaced: int = 0
    booting: tuple[str, ...] = ()


CASES = [
    Case("empty pool grows", [], target=3, capacity=3, create=3),
    Case("nothing to do at zero", [], target=0),
    Case(
        "growth keeps joined workers",
        [inst("a"), inst("b")],
        target=4,
        joined={"a", "b"},
        capacity=4,
        create=2,
    ),
    Case(
        "booting instances count toward the target",
        [inst("a"), inst("b")],
        target=2,
        joined={"a"},
        capacity=2,
        booting=("b",),
    ),
    Case(
        "creating instances are booting",
        [inst("a", CREATING)],
        target=1,
        capacity=1,
        booting=("a",),
    ),
    Case(
        "a failed instance is replaced",
        [inst("a"), inst("f", FAILED, exit_status=1)],
        target=2,
        joined={"a"},
        failed=("f",),
        capacity=2,
        create=1,
    ),
    Case(
        "a stopped instance is replaced",
        [inst("s", STOPPED, exit_status=0)],
        target=1,
        failed=("s",),
        capacity=1,
        create=1,
    ),
    Case(
        "failures beyond the budget shrink the target",
        [inst("a"), *(inst(f"f{i}", FAILED, exit_status=1) for i in range(3))],
        target=4,
        joined={"a"},
        budget=1,
        failed=("f0", "f1", "f2"),
        unreplaced=2,
        capacity=2,
        create=1,
    ),
    Case(
        "no budget: nothing is replaced",
        [inst("a"), inst("f", FAILED, exit_status=2)],
        target=2,
        joined={"a"},
        budget=0,
        failed=("f",),
        unreplaced=1,
        capacity=1,
    ),
    Case(
        "a negative budget counts as none",
        [inst("f", FAILED, exit_status=2)],
        target=1,
        budget=-5,
        failed=("f",),
        unreplaced=1,
    ),
    Case(
        "unreplaced beyond the target never goes negative",
        [inst(f"f{i}", FAILED) for i in range(5)],
        target=2,
        budget=0,
        failed=tuple(f"f{i}" for i in range(5)),
        unreplaced=5,
    ),
    Case(
        "past the join deadline fails",
        [inst("late", created_at=NOW - TIMEOUT_S - 0.5)],
        target=1,
        failed=("late",),
        capacity=1,
        create=1,
    ),
    Case(
        "exactly at the join deadline still boots",
        [inst("edge", created_at=NOW - TIMEOUT_S)],
        target=1,
        capacity=1,
        booting=("edge",),
    ),
    Case(
        "a joined worker is healthy whatever its age",
        [inst("old", created_at=0.0)],
        target=1,
        joined={"old"},
        capacity=1,
    ),
    Case(
        "a worker that left after joining fails",
        [inst("gone"), inst("a")],
        target=2,
        joined={"a"},
        ever_joined={"gone"},
        failed=("gone",),
        capacity=2,
        create=1,
    ),
    Case(
        "instances being removed are ignored",
        [inst("r"), inst("rf", FAILED, exit_status=1), inst("a")],
        target=1,
        joined={"a", "r"},
        removing={"r", "rf"},
        capacity=1,
    ),
    Case(
        "deleting instances are ignored, even joined or failed-looking ones",
        [inst("d", DELETING), inst("d2", DELETING, created_at=0.0), inst("a")],
        target=2,
        joined={"a", "d"},
        ever_joined={"d2"},
        capacity=2,
        create=1,
    ),
    Case(
        "scale-down drops the newest booting first",
        [
            inst("h1"),
            inst("h2"),
            inst("b1", created_at=NOW - 30),
            inst("b3", created_at=NOW - 10),
            inst("b2", created_at=NOW - 20),
        ],
        target=3,
        joined={"h1", "h2"},
        drop=("b3", "b2"),
        capacity=3,
        booting=("b1",),
    ),
    Case(
        "scale-down retires joined workers after every booting one is dropped",
        [inst("h1"), inst("h2"), inst("h3"), inst("b1")],
        target=1,
        joined={"h1", "h2", "h3"},
        drop=("b1",),
        retire=2,
        capacity=1,
    ),
    Case(
        "scale to zero",
        [inst("h1"), inst("b1"), inst("b2", created_at=NOW - 2)],
        target=0,
        joined={"h1"},
        drop=("b1", "b2"),
        retire=1,
    ),
    Case(
        "unreplaced failures shrink the target below the live count",
        [inst("h1"), inst("h2"), inst("f1", FAILED), inst("f2", FAILED)],
        target=3,
        joined={"h1", "h2"},
        budget=0,
        failed=("f1", "f2"),
        unreplaced=2,
        retire=1,
        capacity=1,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide_table(case: Case) -> None:
    decision = run(
        case.instances,
        target=case.target,
        joined=case.joined,
        ever_joined=case.ever_joined,
        removing=case.removing,
        budget=case.budget,
    )
    assert tuple(f.instance for f in decision.failures) == case.failed
    assert decision.drop_booting == case.drop
    assert decision.retire == case.retire
    assert decision.capacity == case.capacity
    assert decision.create == case.create
    assert decision.unreplaced == case.unreplaced
    assert decision.booting == case.booting


@pytest.mark.parametrize(
    ("instance", "ever", "fragment"),
    [
        (inst("x", FAILED, exit_status=3), False, "stopped before joining (exit status 3)"),
        (inst("x", STOPPED, exit_status=0), True, "joined, then stopped (exit status 0)"),
        (inst("x", FAILED), False, "the provider reports it failed before it joined"),
        (inst("x", FAILED), True, "the provider reports it failed after joining"),
        (inst("x"), True, "its worker left the cluster and did not come back"),
        (inst("x", created_at=0.0), False, "did not join within 60 s"),
    ],
)
def test_failure_reasons_say_what_happened(instance: Instance, ever: bool, fragment: str) -> None:
    decision = run([instance], target=1, ever_joined={"x"} if ever else set())
    assert decision.failures == (Failure("x", decision.failures[0].reason),)
    assert fragment in decision.failures[0].reason


def test_decision_is_frozen() -> None:
    decision = run([], target=1)
    with pytest.raises(AttributeError):
        decision.create = 5  # type: ignore[misc]


# -- invariants over random inputs ------------------------------------------------------

STATES = [RUNNING, CREATING, STOPPED, FAILED, DELETING]

instance_rows = st.lists(
    st.tuples(
        st.sampled_from(STATES),
        st.floats(min_value=NOW - 3 * TIMEOUT_S, max_value=NOW),
        st.booleans(),  # joined
        st.booleans(),  # ever joined (beyond joined)
        st.booleans(),  # removing
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    rows=instance_rows,
    target=st.integers(min_value=0, max_value=15),
    budget=st.integers(min_value=-2, max_value=6),
)
def test_decide_invariants(
    rows: list[tuple[InstanceState, float, bool, bool, bool]], target: int, budget: int
) -> None:
    instances = [
        inst(f"i{n}", state, created, 1 if state is FAILED else 0)
        for n, (state, created, *_rest) in enumerate(rows)
    ]
    joined = {f"i{n}" for n, row in enumerate(rows) if row[2]}
    ever = joined | {f"i{n}" for n, row in enumerate(rows) if row[3]}
    removing = {f"i{n}" for n, row in enumerate(rows) if row[4]}
    decision = run(
        instances, target=target, joined=joined, ever_joined=ever, removing=removing, budget=budget
    )

    considered = [i for i in instances if i.state is not DELETING and i.id not in removing]
    ended = {i.id for i in considered if i.state in (STOPPED, FAILED)}
    healthy = {i.id for i in considered if i.id not in ended and i.id in joined}
    candidates = [i for i in considered if i.id not in ended and i.id not in joined]
    booting_before = {
        i.id for i in candidates if i.id not in ever and NOW - i.created_at <= TIMEOUT_S
    }
    failed = {f.instance for f in decision.failures}

    # every considered instance lands in exactly one bucket; ignored ones in none
    assert len(failed) == len(decision.failures)
    assert failed == {i.id for i in considered} - healthy - booting_before
    assert ended <= failed
    assert set(decision.drop_booting) | set(decision.booting) == booting_before
    assert not set(decision.drop_booting) & set(decision.booting)

    # counts are never negative, and the budget bounds what is replaced
    for value in (decision.retire, decision.capacity, decision.create, decision.unreplaced):
        assert value >= 0
    assert decision.unreplaced == max(0, len(failed) - max(0, budget))
    assert decision.retire <= len(healthy)

    # capacity arithmetic
    effective = max(0, target - decision.unreplaced)
    assert decision.capacity == effective
    assert decision.capacity == (
        len(healthy)
        + len(booting_before)
        - len(decision.drop_booting)
        - decision.retire
        + decision.create
    )
    # never create and shrink in the same cycle; retire only once nothing is left to drop
    assert decision.create == 0 or (not decision.drop_booting and decision.retire == 0)
    if decision.retire:
        assert not decision.booting

    # dropped instances are the newest of the booting ones
    created = {i.id: i.created_at for i in instances}
    if decision.drop_booting and decision.booting:
        assert min(created[i] for i in decision.drop_booting) >= max(
            created[i] for i in decision.booting
        )


@pytest.mark.parametrize(
    ("left_ago", "rejoining"),
    [(1.0, True), (TIMEOUT_S - 1, True), (TIMEOUT_S + 1, False)],
)
def test_a_worker_that_left_may_rejoin_within_the_join_deadline(
    left_ago: float, rejoining: bool
) -> None:
    decision = decide(
        [inst("a"), inst("b")],
        target=2,
        joined={"b"},
        ever_joined={"a", "b"},
        removing=set(),
        now=NOW,
        join_timeout_s=TIMEOUT_S,
        replacements_left=3,
        left_at={"a": NOW - left_ago},
    )
    if rejoining:
        assert decision.failures == ()
        assert decision.booting == ("a",)
        assert decision.create == 0
    else:
        assert [f.instance for f in decision.failures] == ["a"]
        assert decision.create == 1


# -- the Reconciler, without a Dask scheduler ------------------------------------------


def _stuck_pool(provider: object, fake_python: object, name: str) -> None:
    from azmanagers.providers.base import BootSpec, PoolSpec
    from azmanagers.providers.tags import owner_id, resource_tags

    boot = BootSpec(role="worker", payload={}, env={"AZMANAGERS_PYTHON": str(fake_python)})
    spec = PoolSpec(name=name, boot=boot, tags=resource_tags(name, owner_id(), 3600.0))
    provider.create_pool(spec)  # type: ignore[attr-defined]


def test_the_reconciler_runs_a_pool_without_a_scheduler(fake_python: object) -> None:
    """A set stands in for the scheduler: the reconciler creates, fails, replaces, removes."""
    import asyncio
    import time

    from azmanagers.cluster.reconciler import Reconciler
    from azmanagers.config.settings import ClusterSettings
    from azmanagers.providers import get_provider

    provider = get_provider("local")
    joined: set[str] = set()
    settings = ClusterSettings(join_timeout_s=1.5, max_replacements=1)
    rec = Reconciler(provider, "headless", lambda: joined, settings)
    _stuck_pool(provider, fake_python, "headless")
    try:
        assert rec.pace == provider.pace  # no override: the provider's own pace
        rec.set_target(2)
        asyncio.run(rec.step())
        first, second = sorted(i.id for i in provider.list_instances("headless"))
        joined.add(first)  # "the scheduler" saw one worker join
        asyncio.run(rec.step())
        assert set(rec.joined_at) == {first} and rec.plan == {first, second}
        time.sleep(settings.join_timeout_s + 0.5)
        asyncio.run(rec.step())  # the other missed its deadline: deleted and replaced
        assert [(f[0], f[1]) for f in rec.failures] == [(second, "it did not join within 1.5 s")]
        live = {i.id for i in provider.list_instances("headless") if i.id != second}
        assert first in live and len(live) == 2
        removed = rec.shrink({first})
        asyncio.run(rec.retire(removed))
        assert rec.target == 1 and first not in rec.plan
        assert rec.errors.current is None
    finally:
        provider.delete_pool("headless", wait=True)


def test_a_throttled_provider_is_not_called_until_its_retry_after(fake_python: object) -> None:
    import asyncio

    from azmanagers.cluster.reconciler import Reconciler
    from azmanagers.config.settings import ClusterSettings
    from azmanagers.errors import ThrottledError
    from azmanagers.providers.local.provider import LocalProvider

    class ThrottlingProvider(LocalProvider):
        """The local provider, answering like ARM once its hourly reads are spent."""

        lists = 0

        def list_instances(self, pool: str) -> list[Instance]:
            self.lists += 1
            if self.lists >= 3:
                raise ThrottledError("reads spent; try again after 3542 s", retry_after_s=3542)
            return super().list_instances(pool)

    provider = ThrottlingProvider()
    rec = Reconciler(provider, "throttled", set, ClusterSettings(reconcile_interval_s=0.05))
    _stuck_pool(provider, fake_python, "throttled")

    async def run_for(seconds: float) -> None:
        task = asyncio.ensure_future(rec.run())
        await asyncio.sleep(seconds)
        rec.set_target(1)  # a user's scale wakes the loop: still no call
        await asyncio.sleep(seconds)
        rec.stop()
        await asyncio.wait_for(task, 10)

    try:
        asyncio.run(run_for(0.5))
        assert provider.lists == 3  # two lists, the throttled one, then nothing
        assert rec.gate.throttled_for_s() > 3000
        with pytest.raises(ThrottledError, match=r"not checking the quota.*\d+ s more"):
            rec.gate.call("checking the quota", provider.check_capacity, {}, 1)
    finally:
        provider.delete_pool("throttled", wait=True)


def test_a_delete_the_provider_refused_is_retried_once_it_accepts_calls(
    fake_python: object,
) -> None:
    """An instance whose delete was throttled is not forgotten: a later step deletes it."""
    import asyncio
    import time

    from azmanagers.cluster.reconciler import Reconciler
    from azmanagers.config.settings import ClusterSettings
    from azmanagers.errors import ThrottledError
    from azmanagers.providers.local.provider import LocalProvider

    class RefusingProvider(LocalProvider):
        """The local provider, refusing the first delete as a throttled ARM would."""

        refused = 0

        def delete_instances(self, pool: str, instance_ids: Sequence[str]) -> None:
            if not self.refused:
                self.refused += 1
                raise ThrottledError("writes spent; try again after 1 s", retry_after_s=0.5)
            super().delete_instances(pool, instance_ids)

    provider = RefusingProvider()
    rec = Reconciler(provider, "refused", set, ClusterSettings())
    _stuck_pool(provider, fake_python, "refused")
    try:
        rec.set_target(2)
        asyncio.run(rec.step())
        names = sorted(i.id for i in provider.list_instances("refused"))
        assert len(names) == 2
        with pytest.raises(ThrottledError):
            asyncio.run(rec.retire(rec.shrink({names[0]})))
        assert rec.target == 1
        time.sleep(rec.gate.throttled_for_s() + 0.1)  # the Retry-After passes
        asyncio.run(rec.step())
        live = {
            i.id
            for i in provider.list_instances("refused")
            if i.state is not InstanceState.DELETING
        }
        assert live == {names[1]}, "the refused delete was never sent again"
    finally:
        provider.delete_pool("refused", wait=True)
