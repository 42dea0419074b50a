"""Where a sweep's inputs land: shared inputs are indexed once, runs checked against them."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from azmanagers import batch
from azmanagers.batch.stage_sweep import SharedPlaces, check_places, stage_sweep
from azmanagers.errors import ConfigError
from azmanagers.storage.local import LocalStorage

PIECES = ("a", "b", "a/x", "a/y", "b/x", "a/x/1", "c")


class Walked(tuple[str, ...]):
    """A source's places that count every path read from them."""

    reads = 0

    def __iter__(self) -> Iterator[str]:
        for path in super().__iter__():
            Walked.reads += 1
            yield path


def outcome(check: Callable[..., None], *args: object) -> str:
    """The message ``check(*args)`` raised, or "ok"."""
    try:
        check(*args)
    except ConfigError as exc:
        return str(exc)
    return "ok"


def test_the_index_refuses_exactly_what_the_full_check_refuses() -> None:
    rng = random.Random(10)
    names = [f"s{i}" for i in range(6)]
    for _ in range(3000):
        placed = {n: tuple(rng.sample(PIECES, rng.randint(0, 3))) for n in names}
        shared = tuple(rng.choices(names, k=rng.randint(0, 3)))  # repeats too
        places = SharedPlaces(shared, placed)
        for _ in range(3):
            own = tuple(rng.choices(names, k=rng.randint(0, 3)))
            full = outcome(check_places, "r1", (*own, *shared), placed)
            assert outcome(places.check, "r1", own) == full, (own, shared, placed)


def test_a_clash_with_a_shared_input_names_both() -> None:
    placed = {"tables/": ("big.h5", "sub/t.csv"), "run.inp": ("run.inp",), "sub": ("sub",)}
    places = SharedPlaces(("tables/",), placed)
    places.check("r1", ("run.inp",))
    with pytest.raises(ConfigError, match=r"inputs 'sub' and 'tables/' of run r2 both land on"):
        places.check("r2", ("run.inp", "sub"))


def test_a_big_sweep_reads_the_shared_input_once_not_once_per_run() -> None:
    common = Walked(f"tables/{i // 100}/t{i}.csv" for i in range(5000))
    placed: dict[str, tuple[str, ...]] = {"tables": common}
    runs = [(f"run-{i}", f"in/{i}.inp") for i in range(2000)]
    for _, source in runs:
        placed[source] = Walked((f"case/{source}",))
    Walked.reads = 0
    places = SharedPlaces(("tables",), placed)
    for run_id, source in runs:
        places.check(run_id, (source,))
    assert Walked.reads <= 2 * 5000 + 2000  # the index (twice over the shared), one per run
    # the full check per run, as before, reads the shared input for every run
    Walked.reads = 0
    for run_id, source in runs[:20]:
        check_places(run_id, (source, "tables"), placed)
    assert Walked.reads == 20 * (5000 + 1)


def test_a_staged_sweep_refuses_a_run_input_that_lands_on_a_shared_one(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "big.h5").write_text("table")
    for case in ("a", "b"):
        (tmp_path / case).mkdir()
        (tmp_path / case / "run.inp").write_text(case)
    (tmp_path / "b" / "big.h5").write_text("mine")
    model = batch.Model("m", command="true", inputs=["{CASE}/"], shared=["tables/"])
    store = LocalStorage(tmp_path / "store")
    with pytest.raises(ConfigError) as refused:
        stage_sweep(store, store, "job/", model.sweep(batch.product(CASE=["a", "b"])), tmp_path)
    assert "inputs 'b/' and 'tables/' of run " in str(refused.value)
    assert "both land on 'big.h5'" in str(refused.value)
    fine = model.sweep(batch.product(CASE=["a"]))
    refs, shared, _ = stage_sweep(store, store, "job/", fine, tmp_path)
    assert [ref.source for ref in shared] == ["tables/"] and "a/" in refs
