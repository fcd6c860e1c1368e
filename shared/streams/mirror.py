"""The forward mirror: one DynamoDB Streams batch in, target writes out.

Design:

* A batch (Lambda's event, or the local runner's identical event) is parsed
  into *chains*: the records of one source item, in stream order. Only a
  chain's last clean image is written (coalescing: each target key is written
  once per batch, with its newest value), and earlier images only say which
  keys may have to go. The write protocol itself is `shared.protocol.apply`.
* An earlier image that transforms cleanly into nothing (in `sc`: an
  account whose status is ``deleted``) is handed to the applier as None, an
  absent item. Both are clean and produce no target item, so the applier
  treats them alike, with one difference: an absent item names no candidate
  keys. No writer ever writes a key from an image that produces nothing
  (fresh, stale and validated writers all write the transform's items), so
  those candidates could only be removals of keys that are not there: a
  refused conditional delete each (a write unit, on AWS too), on every
  update of a deleted account. The keys of the image before it are still
  candidates (it is in the chain, or its record removed them, tombstones
  and all), and quarantine entries still bring their held keys.
* Quarantine entries are read only for the chains whose item may have one
  (`Chain.may_be_quarantined`): a strongly consistent read per item was most
  of the mirror's capacity units beyond the writes themselves (issue 14). An
  entry outlives the write that made it only while the item's state is bad
  (it failed the transform or the size check) or targets a key two items
  can claim (`definition.shared_key`: a collision). Which states can an
  entry met by this batch belong to? Every state the item held at the
  source before the batch's last record of it: the chain's first OldImage
  (the state before the batch; none if the chain starts with an INSERT: a
  delete clears the entry, and a redelivery starts at the same record), and
  the NewImage of every record but the last. A middle state counts: the
  backfill may have scanned it, and kept its entry for it because the
  source still held it when it re-read after writing
  (`Applier._quarantine_stale`); the records after it then reach the mirror
  in this one batch. So a chain all of whose earlier states transform
  cleanly into keys no other item can claim has no entry to read. A first
  record without an OldImage that is not an INSERT (a stream without old
  images) is read. Earlier states that are all clean, some with a claimable
  key, can only have a *collision* entry, and every collision is noted in
  the collision summary before its entry is written (`shared.store.control`;
  a validated writer writes it only while the source holds the state it
  read, so before this batch's records, and the summary is read strongly
  with the batch's first reads), so those chains' entries are read only if
  the summary names the item: almost never (`Chain.only_collision_entry`).
* Waiters: a batch collects the claimable keys its chains release and, after
  all lanes, reads the collision summary once and looks up the waiters only
  of the keys it names (`Applier.collecting_releases`). A transient fault there
  fails the whole batch: its redelivery releases the keys again.
* Chains that can touch a common target key (a transfer, a rename onto a
  freed name, a collision) are put in one *lane* and applied one after the
  other in stream order; different lanes run concurrently (bounded by
  `mirror_concurrency`). This keeps per-key order while using the engine's
  parallelism.
* Outcomes are per record: a chain that hit a transient fault fails all of
  its records, and every later chain of the same lane too, so the stream
  (Lambda, or the runner) redelivers them in order. Bad data never fails a
  record: it is quarantined by the applier.
* Powertools' `BatchProcessor` builds the partial batch response. Its
  per-record template method is kept: `_prepare` applies the coalesced batch
  once, and the record handler only reports each record's outcome.

* Mode gate, faults, lifecycle, receipts and usage are the frame's
  (`shared.streams.engine`): the forward mirror applies only in `old` and
  while freezing towards `new`; its first reads, beside the flag, are the
  stale-writer registry and the batch's quarantine entries. Each applying
  thread also owns its `Applier` and registry watch (`_MirrorState`).
* Round trips: a batch is one round of reads (a second for the entries the
  collision summary names), its writes (lanes), a read of the collision
  summary if it released a claimable key, and one write of its receipts.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, cast

from shared.core.aws import error_code, is_transient
from shared.core.capacity import Usage
from shared.core.codec import from_stream_image
from shared.core.definition import Item, MigrationDefinition, SourceRef, TargetKey
from shared.core.itemsize import check_target_items
from shared.core.settings import Settings
from shared.protocol.apply import Applier, ApplyResult, gather_settled
from shared.store import keys
from shared.store.control import (
    CollisionSummary,
    ControlStore,
    QuarantineEntry,
    StaleWriterRegistry,
    StaleWriterWatch,
)
from shared.store.mode import ModeState, forward_applies
from shared.streams.engine import EngineState, StreamEngine, retryable, sequences


@dataclass
class Chain:
    ref: SourceRef
    records: list[dict[str, Any]] = field(default_factory=list)
    first_index: int = 0
    _images: list[Item | None] | None = field(default=None, repr=False)
    _applied: list[Item | None] | None = field(default=None, repr=False)
    _outcomes: dict[int, Any] = field(default_factory=dict, repr=False)  # `_targets`, per image, once

    def images(self) -> list[Item | None]:
        """[first OldImage, NewImage of each record...] as native items (decoded once)."""
        if self._images is None:
            first = self.records[0]["dynamodb"]
            images: list[Item | None] = [from_stream_image(first["OldImage"]) if "OldImage" in first else None]
            for record in self.records:
                body = record["dynamodb"]
                images.append(from_stream_image(body["NewImage"]) if "NewImage" in body else None)
            self._images = images
        return self._images

    def applied_images(self, definition: MigrationDefinition) -> list[Item | None]:
        """`images()` as the applier gets them: an earlier image that produces nothing as None (module note)."""
        if self._applied is None:
            images = list(self.images())
            if images[0] is not None and self.first_targets(definition) == []:
                images[0] = None
            for index in range(1, len(images) - 1):  # the last image names no candidates anyway
                if images[index] is not None and self._targets(definition, index) == []:
                    images[index] = None
            self._applied = images
        return self._applied

    def _targets(self, definition: MigrationDefinition, index: int) -> Any:
        """The target items of `images()[index]`, checked as the applier checks them (size included),
        or `_BAD` if it is bad or absent; each image transformed once."""
        if index not in self._outcomes:
            image = self.images()[index]
            outcome: Any = _BAD
            if image is not None:
                try:
                    targets = definition.transform(self.ref.table, image)
                    check_target_items(targets)
                    outcome = targets
                except Exception:  # noqa: BLE001  (bad data: the applier quarantines it)
                    outcome = _BAD
            self._outcomes[index] = outcome
        return self._outcomes[index]

    def first_targets(self, definition: MigrationDefinition) -> list[Item] | None:
        """The first OldImage's target items, checked as the applier checks them (size
        included); None if it has none or is bad."""
        outcome = self._targets(definition, 0)
        return None if outcome is _BAD else outcome

    def _earlier_states(self) -> list[int]:
        """Indexes in `images()` of the states the item held at the source before the chain's last
        record: the first OldImage (unless the chain starts with an INSERT), and the NewImage of every
        record but the last (a REMOVE's: none, the item was absent)."""
        indexes = [] if self.records[0].get("eventName") == "INSERT" else [0]
        images = self.images()
        return indexes + [i for i in range(1, len(self.records)) if images[i] is not None]

    def may_be_quarantined(self, definition: MigrationDefinition) -> bool:
        """Whether the item may have a quarantine entry to read before applying (module note)."""
        for index in self._earlier_states():
            outcome = self._targets(definition, index)
            if outcome is _BAD:
                return True  # bad, or no OldImage to tell
            if any(definition.shared_key(definition.target_key(t)) for t in outcome):
                return True
        return False

    def only_collision_entry(self, definition: MigrationDefinition) -> bool:
        """Every earlier state transformed cleanly (some with keys another item may claim): the only
        entry the item may have is a collision's, which the collision summary tells of."""
        return all(self._targets(definition, i) is not _BAD for i in self._earlier_states())


_BAD = object()


@dataclass
class BatchStats:
    records: int = 0
    chains: int = 0
    applied: int = 0
    written: int = 0
    removed: int = 0
    skipped: int = 0
    quarantined: int = 0
    cleared: int = 0
    woken: int = 0
    failed_records: int = 0
    mode_skipped: int = 0  # records not applied because the mode belongs to reverse replication
    lag_ms: list[float] = field(default_factory=list)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)  # capacity units of the batch, its receipts included

    def log_fields(self) -> dict[str, Any]:
        """The handler's log line of the batch."""
        return {"records": self.records, "chains": self.chains, "written": self.written, "removed": self.removed,
                "quarantined": self.quarantine_reasons, "failed_records": self.failed_records,
                "read_units": self.usage.read_units, "write_units": self.usage.write_units}

    def metrics(self) -> list[tuple[str, str, float]]:
        """The handler's EMF metrics of the batch: (name, unit, value)."""
        counts = [("RecordsApplied", "Count", self.records - self.failed_records),
                  ("RecordsQuarantined", "Count", self.quarantined),
                  ("RecordsRetried", "Count", self.failed_records),
                  ("WriteUnits", "Count", self.usage.write_units), ("ReadUnits", "Count", self.usage.read_units)]
        return counts + ([("LagMs", "Milliseconds", max(self.lag_ms))] if self.lag_ms else [])


def table_from_arn(arn: str) -> str:
    """`arn:aws:dynamodb:r:a:table/NAME/stream/TS` -> NAME."""
    try:
        return arn.split(":table/", 1)[1].split("/", 1)[0]
    except IndexError:
        raise ValueError(f"not a DynamoDB stream ARN: {arn!r}") from None


@dataclass
class _MirrorState(EngineState):
    """A thread's state (`EngineState`), with its applier and stale-writer registry watch."""

    applier: Applier | None = None
    watch: StaleWriterWatch | None = None


class MirrorEngine(StreamEngine):
    """Applies stream batches; one per process (Lambda container or runner)."""

    component = "mirror"
    direction = "forward"
    state_type = _MirrorState

    def __init__(self, settings: Settings, definition: MigrationDefinition | None = None) -> None:
        super().__init__(settings, definition)
        self._start_recorded: set[str] = set()
        self._logical_by_physical = {settings.physical_name(s.name): s.name for s in self.definition.sources}

    def applies(self, mode: ModeState) -> bool:
        return forward_applies(mode)

    def _new_stats(self, records: list[dict[str, Any]]) -> BatchStats:
        return BatchStats(records=len(records))

    # ------------------------------------------------------------- per thread
    def _mirror_state(self) -> _MirrorState:
        return cast(_MirrorState, self._state())

    def _connected(self, state: EngineState) -> None:
        mine = cast(_MirrorState, state)
        control = ControlStore(state.client, self.settings.control_table)
        mine.watch = StaleWriterWatch(StaleWriterRegistry(state.client, self.settings.control_table),
                                      self.settings.stale_writer_refresh_s)
        mine.applier = Applier(self.settings, self.definition, state.client, control,
                               tombstone_source=mine.watch.stale_writers_about)

    @property
    def applier(self) -> Applier | None:
        return self._mirror_state().applier

    @applier.setter
    def applier(self, applier: Applier | None) -> None:
        self._mirror_state().applier = applier

    @property
    def watch(self) -> StaleWriterWatch | None:
        return self._mirror_state().watch

    @property
    def last_tombstone_at(self) -> float:
        """When any thread's applier last left a tombstone (the runner's final sweep waits it out)."""
        with self._states_lock:
            appliers = [cast(_MirrorState, s).applier for s in self._states]
        return max((a.last_tombstone_at for a in appliers if a is not None), default=0.0)

    async def _ensure_applier(self) -> Applier:
        state = cast(_MirrorState, await self._connect())
        assert state.applier is not None
        return state.applier

    # ---------------------------------------------------------------- batch
    def _chains(self, records: list[dict[str, Any]]) -> OrderedDict[SourceRef, Chain]:
        chains: OrderedDict[SourceRef, Chain] = OrderedDict()
        for index, record in enumerate(records):
            physical = table_from_arn(record["eventSourceARN"])
            logical = self._logical_by_physical.get(physical, physical)
            source = self.definition.source(logical)
            keys = from_stream_image(record["dynamodb"]["Keys"])
            ref = source.ref(keys)
            chain = chains.get(ref)
            if chain is None:
                chain = chains[ref] = Chain(ref, first_index=index)
            chain.records.append(record)
        return chains

    def _lanes(
        self, chains: OrderedDict[SourceRef, Chain], entries: dict[SourceRef, QuarantineEntry]
    ) -> list[list[Chain]]:
        """Group chains that may touch a common target key (union-find)."""
        parent: dict[SourceRef, SourceRef] = {ref: ref for ref in chains}

        def find(ref: SourceRef) -> SourceRef:
            while parent[ref] != ref:
                parent[ref] = parent[parent[ref]]
                ref = parent[ref]
            return ref

        owner_of_key: dict[TargetKey, SourceRef] = {}
        for ref, chain in chains.items():
            keys: set[TargetKey] = set(entries[ref].held_keys) if ref in entries else set()
            for image in chain.applied_images(self.definition):
                if image is not None:
                    keys |= self.definition.candidate_keys(ref.table, image)
            for key in keys:
                other = owner_of_key.setdefault(key, ref)
                if other != ref:
                    parent[find(ref)] = find(other)
        lanes: dict[SourceRef, list[Chain]] = {}
        for ref, chain in chains.items():
            lanes.setdefault(find(ref), []).append(chain)
        return [sorted(lane, key=lambda c: c.first_index) for lane in lanes.values()]

    def _parse(self, records: list[dict[str, Any]], stats: BatchStats) -> OrderedDict[SourceRef, Chain]:
        now = time.time()
        for record in records:
            created = record["dynamodb"].get("ApproximateCreationDateTime")
            if created is not None:
                stats.lag_ms.append(max(0.0, (now - float(created)) * 1000))
        return self._chains(records)

    async def _prefetch(self, state: EngineState,
                        chains: OrderedDict[SourceRef, Chain]) -> dict[SourceRef, QuarantineEntry]:
        """Tombstones only while a stale writer (backfill) may be about: the applier asks the
        registry watch right before each removal; reading it here surfaces a registry failure
        early, as a transient fault of the whole batch. And the chains' quarantine entries."""
        applier = cast(_MirrorState, state).applier
        assert applier is not None
        certain: list[SourceRef] = []  # entries read in any case
        if_collided: list[SourceRef] = []  # read only if the collision summary names the item
        for ref, chain in chains.items():
            if chain.may_be_quarantined(self.definition):
                (if_collided if chain.only_collision_entry(self.definition) else certain).append(ref)

        async def summary() -> CollisionSummary:
            return await applier.control.collision_summary() if if_collided else CollisionSummary()

        _, entries, said = await gather_settled(
            applier.tombstones_now(), applier.control.quarantine_get_many(certain), summary())
        collided = [ref for ref in if_collided if said.may_have_collided(ref)]
        if collided:
            entries = {**entries, **await applier.control.quarantine_get_many(collided)}
        return cast(dict[SourceRef, QuarantineEntry], entries)

    async def _apply(self, state: EngineState, chains: OrderedDict[SourceRef, Chain],
                     entries: dict[SourceRef, QuarantineEntry], stats: BatchStats) -> set[str]:
        applier = cast(_MirrorState, state).applier
        assert applier is not None
        stats.chains = len(chains)
        await self._record_start(chains)
        failed: set[str] = set()
        semaphore = asyncio.Semaphore(self.settings.mirror_concurrency)

        async def run_lane(lane: list[Chain]) -> None:
            broken = False
            for chain in lane:
                if broken:
                    failed.update(sequences(chain.records))
                    continue
                try:
                    async with semaphore:
                        result = await applier.apply_change(chain.ref, chain.applied_images(self.definition),
                                                         entries.get(chain.ref))
                except Exception as exc:
                    if not retryable(exc):
                        raise
                    broken = True  # the lane's later chains wait for this one's redelivery
                    failed.update(sequences(chain.records))
                    continue
                self._count(stats, result)

        # Settled: a lane that raises must not leave the others' writes in flight to
        # resume in this loop's next batch, after their records were redelivered.
        with applier.collecting_releases() as released:
            await gather_settled(*(run_lane(lane) for lane in self._lanes(chains, entries)))
        try:
            stats.woken += await applier.wake_released(released)
        except Exception as exc:
            if not retryable(exc):
                raise
            # Which records released which keys is not kept: redeliver them all (module note).
            return {seq for chain in chains.values() for seq in sequences(chain.records)}
        return failed

    async def _record_start(self, chains: OrderedDict[SourceRef, Chain]) -> None:
        """Remember, once, since when the mirror covers each table (the backfill checks it)."""
        new = {c.ref.table for c in chains.values()} - self._start_recorded
        if not new or self.applier is None:
            return
        first = min(
            (float(r["dynamodb"].get("ApproximateCreationDateTime", time.time()))
             for c in chains.values() for r in c.records),
            default=time.time(),
        )
        for table in new:
            try:
                await self.applier.client.put_item(
                    TableName=self.settings.control_table,
                    Item={**keys.mirror_start(table), "started_at": {"N": repr(first)}},
                    ConditionExpression="attribute_not_exists(PK)",
                )
            except Exception as exc:
                if is_transient(exc):
                    continue  # recorded on a later batch; never fail records for this
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
            self._start_recorded.add(table)

    @staticmethod
    def _count(stats: BatchStats, result: ApplyResult) -> None:
        stats.applied += 1
        stats.written += result.written
        stats.removed += result.removed
        stats.skipped += result.skipped
        stats.woken += result.woken
        stats.cleared += int(result.cleared_quarantine)
        if result.quarantined is not None:
            stats.quarantined += 1
            reason = result.quarantined.reason
            stats.quarantine_reasons[reason] = stats.quarantine_reasons.get(reason, 0) + 1
