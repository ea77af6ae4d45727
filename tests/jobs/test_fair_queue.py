"""The fair queue: round robin between users, priority tiers, removal, batches."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from runner.jobs import DuplicateJob, FairQueue, JobSpec, UnknownJob, fair_order


def job(job_id: str, user: int, priority: int = 0, key: str | None = None) -> JobSpec:
    return JobSpec(job_id, {}, user_id=user, priority=priority, batch_key=key)


def drain(queue: FairQueue) -> list[str]:
    out = []
    while (taken := queue.take()) is not None:
        out.append(taken.job_id)
    return out


def test_round_robin_from_the_issue():
    jobs = [job("A1", 1), job("A2", 1), job("A3", 1), job("B1", 2), job("C1", 3)]
    assert [j.job_id for j in fair_order(jobs)] == ["A1", "B1", "C1", "A2", "A3"]


def test_positions_follow_the_running_order():
    queue = FairQueue()
    assert [queue.put(j) for j in (job("A1", 1), job("A2", 1), job("B1", 2))] == [1, 2, 2]
    assert queue.position("A2") == 3
    assert queue.position("B1") == 2
    assert queue.position("nope") is None


def test_a_user_who_just_ran_waits_behind_the_others():
    queue = FairQueue()
    queue.put(job("A1", 1))
    assert queue.take().job_id == "A1"
    queue.put(job("A2", 1))
    queue.put(job("B1", 2))
    assert drain(queue) == ["B1", "A2"]


def test_no_credit_is_saved_up_while_idle():
    queue = FairQueue()
    for i in range(5):
        queue.put(job(f"A{i}", 1))
    for _ in range(3):
        queue.take()
    # B arrives late: it joins the current round, not the first one.
    queue.put(job("B0", 2))
    queue.put(job("B1", 2))
    assert drain(queue) == ["B0", "A3", "B1", "A4"]


def test_priority_tiers_go_first_and_round_robin_within():
    jobs = [
        job("A1", 1),
        job("A2", 1),
        job("P1", 9, priority=5),
        job("P2", 9, priority=5),
        job("Q1", 8, priority=5),
        job("B1", 2),
    ]
    assert [j.job_id for j in fair_order(jobs)] == ["P1", "Q1", "P2", "A1", "B1", "A2"]


def test_removing_a_job_closes_the_gap():
    queue = FairQueue()
    for j in (job("A1", 1), job("A2", 1), job("A3", 1), job("B1", 2), job("B2", 2), job("B3", 2)):
        queue.put(j)
    queue.remove("A1")
    assert queue.jobs()[0].job_id in ("A2", "B1")
    assert drain(queue) == ["A2", "B1", "A3", "B2", "B3"]
    with pytest.raises(UnknownJob, match="A1"):
        queue.remove("A1")


def test_duplicates_are_refused():
    queue = FairQueue()
    queue.put(job("A1", 1))
    with pytest.raises(DuplicateJob, match="A1"):
        queue.put(job("A1", 1))


def test_a_requeued_job_goes_to_the_front():
    queue = FairQueue()
    for j in (job("A1", 1), job("B1", 2), job("C1", 3)):
        queue.put(j)
    lost = queue.take()
    queue.put(lost, front=True)
    assert drain(queue) == ["A1", "B1", "C1"]


def test_batch_takes_compatible_jobs_in_fair_order():
    queue = FairQueue()
    for j in (
        job("A1", 1, key="k"),
        job("A2", 1, key="k"),
        job("B1", 2, key="other"),
        job("C1", 3, key="k"),
        job("D1", 4),
    ):
        queue.put(j)
    batch = queue.take_batch(3)
    assert [j.job_id for j in batch] == ["A1", "C1", "A2"]
    assert drain(queue) == ["B1", "D1"]


def test_batch_limit_and_unkeyed_jobs():
    queue = FairQueue()
    for j in (job("A1", 1), job("B1", 2)):
        queue.put(j)
    assert [j.job_id for j in queue.take_batch(4)] == ["A1"]
    assert queue.take_batch(4, accept=lambda j: False)[0].job_id == "B1"
    assert queue.take_batch(4) == []


@pytest.mark.parametrize("seed", range(5))
def test_many_users_rounds_are_fair(seed):
    rng = random.Random(seed)
    users = list(range(40))
    submitted = []
    for n in range(600):
        user = rng.choice(users[: 5 + n // 20])  # more users over time
        submitted.append(job(f"{user}-{n}", user))
    order = fair_order(submitted)
    assert sorted(j.job_id for j in order) == sorted(j.job_id for j in submitted)
    # Each user's own jobs keep their submission order.
    by_user: dict[int, list[str]] = {}
    for j in order:
        by_user.setdefault(j.user_id, []).append(j.job_id)
    for user, ids in by_user.items():
        assert ids == [j.job_id for j in submitted if j.user_id == user]
    # All submitted at once: in every prefix, users who still have jobs waiting have run
    # within one job of each other.
    totals = Counter(j.user_id for j in submitted)
    served: Counter = Counter()
    for j in order:
        served[j.user_id] += 1
        waiting = [u for u in totals if served[u] < totals[u]]
        counts = [served[u] for u in waiting]
        if counts:
            assert max(counts) - min(counts) <= 1


def test_interleaved_submissions_and_takes_with_many_users():
    rng = random.Random(7)
    queue = FairQueue()
    ran: Counter = Counter()
    n = 0
    for _ in range(2000):
        if rng.random() < 0.55:
            user = rng.randrange(25)
            queue.put(job(f"j{n}", user))
            n += 1
        elif len(queue):
            taken = queue.take()
            ran[taken.user_id] += 1
        # No user with jobs waiting is ever more than one round behind the head.
        waiting_users = {j.user_id for j in queue.jobs()}
        if waiting_users:
            head = queue.jobs()[0].user_id
            assert head in waiting_users
    assert sum(ran.values()) + len(queue) == n
