"""Student versions: every student a gateway may serve, and the one slot that says which serves now.

    candidate ──promote──▶ active ──(a newer one promoted)──▶ retired
        │                    ▲ │
        │ promote --canary   │ └──rollback──▶ retired (its `previous` becomes active again)
        ▼                    │
      canary ──complete──────┘
        └──rollback / automatic rollback──▶ rejected

`student_slot` is one row (`active`, `canary`, `canary_fraction`, `revision`): the single truth that every gateway
process and replica reads. Every change is a compare-and-swap on `revision`, so of two promotions started from the
same slot exactly one lands and the other gets `SlotChanged` (the admin API's 409). Readers poll the row and act
when its revision moves (`gateway.students`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from runtime.store.records import ShadowStore
from runtime.store.schema import VERSION_KINDS, VERSION_STATES, StudentSlotRow, StudentVersionRow


class VersionError(ValueError):
    """A version operation that cannot be done as asked; the message says why and what to do."""


class UnknownVersion(VersionError):
    pass


class VersionExists(VersionError):
    pass


class SlotChanged(VersionError):
    """The slot moved since it was read: another promotion or rollback landed first."""


@dataclass(frozen=True)
class StudentVersion:
    name: str
    kind: str  # "model": a model folder; "lora": an adapter over the configured student; "endpoint": its own server
    model_dir: str | None = None
    adapter_path: str | None = None
    base_url: str | None = None
    served_model: str | None = None
    tokenizer_hash: str | None = None
    policy_file: str | None = None
    handoff_min_prob: float | None = None  # its own handoff floor; None: the gateway's routing.handoff.min_prob
    figures: dict | None = None
    notes: str | None = None
    state: str = "candidate"
    previous: str | None = None
    created_at: datetime | None = None
    changed_at: datetime | None = None

    def public(self) -> dict:
        """What the admin API shows."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        for moment in ("created_at", "changed_at"):
            values[moment] = values[moment].isoformat() if values[moment] else None
        return values


@dataclass(frozen=True)
class Slot:
    active: str | None
    canary: str | None
    canary_fraction: float
    revision: int


_COLUMNS = [item.name for item in fields(StudentVersion)]


class StudentVersions:
    """The versions table and the slot row of one record store."""

    def __init__(self, store: ShadowStore):
        self.store = store
        self.engine = store.engine

    # ------------------------------------------------------------------------------------------------ reading

    def slot(self) -> Slot:
        with Session(self.engine) as session:
            row = session.get(StudentSlotRow, 1)
            return Slot(row.active, row.canary, row.canary_fraction or 0.0, row.revision)

    def get(self, name: str) -> StudentVersion:
        with Session(self.engine) as session:
            row = session.scalar(select(StudentVersionRow).where(StudentVersionRow.name == name))
            if row is None:
                raise UnknownVersion(f"no student version `{name}`; `kdgate student list` shows the registered ones")
            return _version(row)

    def list(self) -> list[StudentVersion]:
        with Session(self.engine) as session:
            return [_version(row) for row in session.scalars(select(StudentVersionRow).order_by(StudentVersionRow.id))]

    # ------------------------------------------------------------------------------------------------ writing

    def register(self, version: StudentVersion) -> StudentVersion:
        """Add a candidate (or, for the first version a gateway seeds, an active one)."""
        if version.kind not in VERSION_KINDS:
            raise VersionError(f"`kind` must be one of {VERSION_KINDS}, got {version.kind!r}")
        if version.state not in VERSION_STATES:
            raise VersionError(f"`state` must be one of {VERSION_STATES}, got {version.state!r}")
        now = datetime.now(UTC)
        values = {name: getattr(version, name) for name in _COLUMNS} | {"created_at": now, "changed_at": now}
        try:
            with Session(self.engine) as session, session.begin():
                session.add(StudentVersionRow(**values))
        except IntegrityError:
            raise VersionExists(f"a student version named `{version.name}` exists already; choose another name "
                                "(a version is never replaced in place)") from None
        return self.get(version.name)

    def seed(self, version: StudentVersion) -> Slot:
        """The configured student as the active version when the slot has none yet (the first start on a store).
        A version of that name registered earlier is made active as it is."""
        slot = self.slot()
        if slot.active is not None:
            return slot
        try:
            self.register(replace(version, state="active"))
        except VersionExists:
            pass
        try:
            return self._swap(slot, {version.name: "active"}, active=version.name, canary=None, fraction=0.0)
        except SlotChanged:  # another process seeded it at the same moment
            return self.slot()

    def promote(self, name: str, seen: Slot, canary_fraction: float | None = None) -> Slot:
        """`name` becomes the active version, or, with a fraction, the canary beside the active one."""
        self.get(name)  # UnknownVersion when there is none
        if name == seen.active:
            raise VersionError(f"`{name}` is already the active version")
        if canary_fraction is not None:
            if not 0.0 < canary_fraction < 1.0:
                raise VersionError(f"`canary_fraction` must be between 0 and 1 (exclusive), got {canary_fraction}")
            states = {name: "canary"}
            if seen.canary and seen.canary != name:
                states[seen.canary] = "rejected"  # a canary replaced by another never became active
            return self._swap(seen, states, active=seen.active, canary=name, fraction=canary_fraction)
        states = {name: "active"}
        if seen.active and seen.active != name:
            states[seen.active] = "retired"
        if seen.canary and seen.canary != name:
            states[seen.canary] = "rejected"
        return self._swap(seen, states, active=name, canary=None, fraction=0.0,
                          previous={name: seen.active} if seen.active != name else {})

    def rollback(self, seen: Slot, reason: str = "rolled back") -> Slot:
        """Back to the previous active version: a canary is dropped (the active version stays); with no canary the
        active version gives way to the one it replaced."""
        if seen.canary is not None:
            return self._swap(seen, {seen.canary: "rejected"}, active=seen.active, canary=None, fraction=0.0,
                              notes={seen.canary: reason})
        if seen.active is None:
            raise VersionError("there is no active student version to roll back")
        previous = self.get(seen.active).previous
        if previous is None:
            raise VersionError(f"`{seen.active}` replaced no earlier version; there is nothing to roll back to")
        return self._swap(seen, {seen.active: "retired", previous: "active"}, active=previous, canary=None,
                          fraction=0.0, notes={seen.active: reason})

    def _swap(self, seen: Slot, states: dict[str, str], *, active: str | None, canary: str | None, fraction: float,
              previous: dict[str, str | None] | None = None, notes: dict[str, str] | None = None) -> Slot:
        """Compare-and-swap the slot against `seen` and set the versions' states, in one transaction."""
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            moved = session.execute(
                update(StudentSlotRow).where(StudentSlotRow.id == 1, StudentSlotRow.revision == seen.revision)
                .values(active=active, canary=canary, canary_fraction=fraction, revision=seen.revision + 1,
                        changed_at=now)).rowcount
            if moved != 1:
                raise SlotChanged("the student slot changed while this was prepared (another promotion or "
                                  "rollback landed first); look at `kdgate student status` and try again")
            for name, state in states.items():
                values = {"state": state, "changed_at": now}
                if previous and name in previous:
                    values["previous"] = previous[name]
                if notes and name in notes:
                    values["notes"] = notes[name]
                session.execute(update(StudentVersionRow).where(StudentVersionRow.name == name).values(**values))
        return Slot(active, canary, fraction, seen.revision + 1)


def _version(row: StudentVersionRow) -> StudentVersion:
    values = {name: getattr(row, name) for name in _COLUMNS}
    for moment in ("created_at", "changed_at"):
        if values[moment] is not None and values[moment].tzinfo is None:
            values[moment] = values[moment].replace(tzinfo=UTC)
    return StudentVersion(**values)
