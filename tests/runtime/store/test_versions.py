"""The versions table and the slot row, on a SQLite file and on PostgreSQL alike: states, the compare-and-swap that
lets one of two promotions land (in turn and in a real race between two connections), rollback from every state, and
the migration that brought them (0003) over a store written before it."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from sqlalchemy import text

from runtime.store.records import ShadowStore, tokens_from_json
from runtime.store.versions import SlotChanged, StudentVersion, StudentVersions, VersionError, VersionExists
from tests.runtime.store.older import store_at


@pytest.fixture
def versions(store_url) -> StudentVersions:
    store = ShadowStore(store_url)
    yield StudentVersions(store)
    store.close()


def model(name: str) -> StudentVersion:
    return StudentVersion(name=name, kind="model", model_dir=f"/models/{name}")


def states(versions: StudentVersions) -> dict[str, str]:
    return {version.name: version.state for version in versions.list()}


def test_seed_makes_the_configured_student_active_once(versions):
    slot = versions.seed(model("v1"))
    assert (slot.active, slot.canary, slot.revision) == ("v1", None, 1)
    assert versions.seed(model("other")) == slot  # a store that has an active version keeps it
    assert states(versions) == {"v1": "active"}


def test_a_version_is_never_replaced_in_place(versions):
    versions.register(model("v2"))
    with pytest.raises(VersionExists, match="exists already"):
        versions.register(model("v2"))


def test_promote_retires_the_old_version_and_remembers_it(versions):
    slot = versions.seed(model("v1"))
    versions.register(model("v2"))
    slot = versions.promote("v2", slot)
    assert (slot.active, slot.revision) == ("v2", 2)
    assert states(versions) == {"v1": "retired", "v2": "active"}
    assert versions.get("v2").previous == "v1"
    with pytest.raises(VersionError, match="already the active"):
        versions.promote("v2", slot)


def test_of_two_promotions_from_one_state_exactly_one_lands(versions):
    seen = versions.seed(model("v1"))
    versions.register(model("v2"))
    versions.register(model("v3"))
    versions.promote("v2", seen)
    with pytest.raises(SlotChanged, match="another promotion or rollback landed first"):
        versions.promote("v3", seen)
    assert versions.slot().active == "v2" and versions.get("v3").state == "candidate"


def one_of_two_racing_promotions_lands(versions: StudentVersions, other: StudentVersions, rounds: int = 10) -> None:
    """Promote two versions from the same slot at the same moment through two stores, `rounds` times: every time
    exactly one lands and the slot names the winner (AssertionError otherwise)."""
    slot = versions.seed(model("v0"))
    for round_ in range(rounds):
        names = (f"a{round_}", f"b{round_}")
        for name in names:
            versions.register(model(name))
        start, outcomes = threading.Barrier(2), {}

        def promote(store: StudentVersions, name: str, seen=slot) -> None:
            start.wait()
            try:
                outcomes[name] = store.promote(name, seen)
            except SlotChanged:
                outcomes[name] = None

        threads = [threading.Thread(target=promote, args=pair) for pair in zip((versions, other), names)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        landed = [name for name in names if outcomes[name] is not None]
        assert len(landed) == 1, outcomes
        slot = versions.slot()
        assert (slot.active, slot.revision) == (landed[0], round_ + 2)
        assert versions.get(landed[0]).state == "active"
        (lost,) = set(names) - set(landed)
        assert versions.get(lost).state == "candidate"


@pytest.fixture
def other(store_url) -> StudentVersions:
    """A second store on the same database: another connection pool, as another gateway replica has."""
    store = ShadowStore(store_url)
    yield StudentVersions(store)
    store.close()


def test_of_two_promotions_racing_from_two_processes_exactly_one_lands(versions, other):
    one_of_two_racing_promotions_lands(versions, other)


def test_the_race_check_fails_when_the_swap_reads_then_writes(versions, other, monkeypatch):
    """The check above can fail: a swap that reads the revision, then writes without comparing it, lets both
    promotions land."""
    swap = StudentVersions._swap

    def read_then_write(self, seen, states, **changes):
        if self.slot().revision != seen.revision:
            raise SlotChanged("the slot moved")
        time.sleep(0.05)  # the window a read-then-write leaves open: both promotions have read the same slot
        while True:  # then writes whatever the slot is now (last writer wins)
            try:
                return swap(self, dataclasses.replace(seen, revision=self.slot().revision), states, **changes)
            except SlotChanged:
                continue

    monkeypatch.setattr(StudentVersions, "_swap", read_then_write)
    with pytest.raises(AssertionError):
        one_of_two_racing_promotions_lands(versions, other, rounds=3)


def test_a_canary_then_its_completion(versions):
    slot = versions.seed(model("v1"))
    versions.register(model("v2"))
    slot = versions.promote("v2", slot, canary_fraction=0.25)
    assert (slot.active, slot.canary, slot.canary_fraction) == ("v1", "v2", 0.25)
    assert states(versions) == {"v1": "active", "v2": "canary"}
    slot = versions.promote("v2", slot)
    assert (slot.active, slot.canary) == ("v2", None) and states(versions) == {"v1": "retired", "v2": "active"}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_a_canary_share_must_be_between_nothing_and_everything(versions, fraction):
    slot = versions.seed(model("v1"))
    versions.register(model("v2"))
    with pytest.raises(VersionError, match="between 0 and 1"):
        versions.promote("v2", slot, canary_fraction=fraction)


def test_rollback_from_every_state(versions):
    slot = versions.seed(model("v1"))
    with pytest.raises(VersionError, match="nothing to roll back to"):
        versions.rollback(slot)
    versions.register(model("v2"))
    versions.register(model("v3"))
    slot = versions.promote("v2", slot)
    slot = versions.promote("v3", slot, canary_fraction=0.1)
    slot = versions.rollback(slot, "canary worse")  # a half-finished canary: dropped, the active one stays
    assert (slot.active, slot.canary) == ("v2", None) and versions.get("v3").state == "rejected"
    assert versions.get("v3").notes == "canary worse"
    slot = versions.rollback(slot)  # the active one gives way to the one it replaced
    assert slot.active == "v1" and states(versions) == {"v1": "active", "v2": "retired", "v3": "rejected"}


def test_a_store_from_before_versions_upgrades_and_its_records_stay_readable(store_url):
    """A 0002 store holding a record in the old token format: opening it migrates to 0003 in place; the record
    reads back, marked as having no token ids, and its tokens parse."""
    url = store_url
    with store_at(url, "0002") as connection:
        connection.execute(text(
            "INSERT INTO shadow_records (request_id, created_at, kind, student_model, teacher_model, route, "
            "route_reason, prompt, student_answer, student_tokens) VALUES ('old-1', '2026-11-01 10:00:00', 'shadow', "
            "'s', 't', 'student', 'policy:student_only', '[]', 'hi', "
            "'[{\"token\": \"hi\", \"logprob\": -0.1, \"top\": [[\"hi\", -0.1], [\"ho\", -2.5]]}]')"))
    store = ShadowStore(url)
    try:
        (record,) = list(store.iter_records())
        assert record.request_id == "old-1" and record.token_ids is False and record.teacher_version is None
        (token,) = tokens_from_json(record.student_tokens)
        assert token.token == "hi" and token.token_id is None and [top.token for top in token.top_logprobs] == \
            ["hi", "ho"]
        assert StudentVersions(store).slot().revision == 0
    finally:
        store.close()
