"""The single owner of learning: consumes training examples, publishes signed model versions.

The training topic has one partition, so exactly one worker in the group runs
this at a time; after a rebalance the new owner resumes from the last saved
trainer state. Versions are cut every N examples (not on a wall-clock timer) so
the same example sequence gives the same version sequence.

Exactly-once learning: every stored trainer state carries the position it covers
on the topic (a record's offset and how many of its examples are learned), and a
record is acked only once a stored state covers it. After a crash the new owner is
sent again everything the stored state may lack and skips what it already holds.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamproc.adapters.model_store import ModelStore, TrainerPosition
from streamproc.core.modelset import SnapshotRejected, Trainer, version_due
from streamproc.core.training import (
    DecodedRecord,
    ProfileExample,
    TrainingExample,
    decode_record,
    feature_set,
)
from streamproc.metrics import Metrics
from streamproc.settings import ModelSettings

log = logging.getLogger(__name__)
#: Store the trainer state alone (no version), at most this often, while learned records
#: wait for a version: with few examples a version may take hours, and records are acked
#: only once a stored state holds them.
CHECKPOINT_AFTER_S = 60.0


def covered_prefix(offsets: Sequence[int], stored: TrainerPosition | None) -> int:
    """How many leading records of ``offsets`` (delivery order) a stored state fully holds.

    Those may be acked. Stopping at the first record not held keeps acks in delivery
    order, and a record redelivered after a rebalance waits for its older copy.
    """
    if stored is None:
        return 0
    n = 0
    for offset in offsets:
        if offset >= stored.offset:
            break
        n += 1
    return n


def first_to_learn(offset: int, next_offset: int | None, next_index: int) -> int | None:
    """Index of the first example of record ``offset`` not learned yet; None: all were."""
    if next_offset is None or offset > next_offset:
        return 0
    if offset == next_offset:
        return next_index
    return None


@dataclass(frozen=True, slots=True)
class Cut:
    """A version cut and not stored yet, with what storing it writes and the position it covers."""

    version: int
    items: dict[str, bytes | str | int]
    position: TrainerPosition | None


class TrainerService:
    """Learns from training-topic records and publishes bundles through the model store.

    Learning and storing are apart so that a store which fails is retried without
    learning anything twice: :meth:`learn` (CPU only) cuts versions into
    :attr:`unpublished`, and :meth:`flush` stores them, oldest first, each one
    removed only once it is written. :meth:`covered` says which records a stored
    state holds, so the caller acks only those.
    """

    def __init__(self, settings: ModelSettings, store: ModelStore, metrics: Metrics,
                 clock: Callable[[], float] = time.time,
                 checkpoint_after_s: float = CHECKPOINT_AFTER_S) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.checkpoint_after_s = checkpoint_after_s
        self.trainer: Trainer | None = None
        self.topic = ""
        self.since_publish = 0
        #: The next example to learn: record offset (None before any) and index in it.
        self.next_offset: int | None = None
        self.next_index = 0
        #: What the last stored trainer state covers, and when it was stored.
        self.stored: TrainerPosition | None = None
        self.stored_at = 0.0
        #: Versions cut and not yet stored, oldest first.
        self.unpublished: list[Cut] = []
        #: Counts :meth:`release` calls, so a caller can tell its records went stale.
        self.generation = 0
        #: This trainer's claim on the stored state (see ModelStore.claim), set by load().
        self.owner: str | None = None

    def _new_trainer(self) -> Trainer:
        return Trainer(n_segments=self.settings.segments, seed=42,
                       churn_threshold=self.settings.churn_threshold,
                       min_labels=self.settings.min_labels_before_alerts,
                       horizon_days=self.settings.churn_horizon_days)

    async def load(self, topic: str) -> Trainer | None:
        """The trainer: resumed from its last stored state the first time, else a new one.

        ``topic`` is the training topic; a stored position on another topic is ignored.
        None when a :meth:`release` came while it was reading: the records in hand are
        stale, and a later call loads again.
        """
        if self.trainer is not None:
            return self.trainer
        generation = self.generation
        # Claimed before reading: a store the previous owner still makes either lands
        # before the read (and is resumed from) or is refused.
        owner = uuid.uuid4().hex
        await self.store.claim(owner)
        try:
            trainer, position = await self.store.load_trainer_state()
        except SnapshotRejected as exc:
            self.metrics.model_rejected_snapshots.labels("trainer_state").inc()
            log.error("refused saved trainer state (%s); starting a new trainer", exc.reason)
            trainer, position = None, None
        if self.generation != generation:
            return None
        if trainer is not None and trainer.feature_set != feature_set():
            self.metrics.feature_set_mismatches.labels("trainer_state").inc()
            log.error("the saved trainer state learned another feature set (%s, running %s); "
                      "starting a new trainer", trainer.feature_set, feature_set())
            trainer, position = None, None
        if trainer is None:
            trainer = self._new_trainer()
        else:
            log.info("trainer resumed at model v%s, position %s", trainer.version, position)
        if position is not None and position.topic != topic:
            log.warning("ignoring the trainer position on topic %r: training topic is %r",
                        position.topic, topic)
            position = None
        self.topic, self.trainer, self.owner = topic, trainer, owner
        self.stored, self.stored_at = position, self.clock()
        if position is not None:
            self.next_offset, self.next_index = position.offset, position.index
            self.since_publish = position.since_version
        return trainer

    def release(self) -> None:
        """Forget everything in memory: the training partition moved (or may have).

        Another worker may learn and store while this one does not own the partition, so
        a trainer kept in memory would go on from a stale state if the partition came
        back. Versions cut and not stored are dropped: their records are not acked, so
        they are redelivered. The next :meth:`load` reads the stored state again.
        """
        if self.trainer is not None:
            log.info("training partition released; the next owner resumes from Redis")
        self.generation += 1
        self.trainer, self.owner = None, None
        self.since_publish = 0
        self.next_offset, self.next_index = None, 0
        self.stored, self.stored_at = None, 0.0
        self.unpublished = []

    def learn(self, records: Sequence[tuple[int, bytes | None]]) -> int:
        """Learn (offset, value) records in offset order, cutting a version every N examples.

        Examples already learned (a record redelivered after a crash or a rebalance) are
        skipped. Returns how many were learned. Call :meth:`load` first and :meth:`flush`
        after: this does no I/O.
        """
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("TrainerService.learn before load()")
        counts: dict[str, int] = {}
        for offset, raw in records:
            first = first_to_learn(offset, self.next_offset, self.next_index)
            if first is None:
                continue
            decoded = _parse(raw)
            if decoded.foreign:
                self.metrics.feature_set_mismatches.labels("training_example").inc(
                    decoded.foreign)
            examples = decoded.examples
            for index in range(first, len(examples)):
                kind = _learn(trainer, examples[index])
                counts[kind] = counts.get(kind, 0) + 1
                self.since_publish += 1
                self.next_offset, self.next_index = _after(offset, index + 1, len(examples))
                # Inside the loop: one record holds a whole batch's examples, and a take
                # of records can hold thousands; a version per call would come late.
                if version_due(trainer.version, self.since_publish,
                               self.settings.snapshot_every_examples):
                    self.cut()
            # Malformed and empty records too: there is nothing in them to wait for.
            self.next_offset, self.next_index = offset + 1, 0
        for kind, n in counts.items():
            self.metrics.training_examples.labels(kind).inc(n)
        return sum(counts.values())

    def position(self) -> TrainerPosition | None:
        """What the trainer has learned so far (None before the first record)."""
        if self.next_offset is None:
            return None
        return TrainerPosition(self.topic, self.next_offset, self.next_index, self.since_publish)

    def cut(self) -> int:
        """Freeze the models into the next version, to be stored by :meth:`flush`."""
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("TrainerService.cut before load()")
        bundle = trainer.bundle()
        self.since_publish = 0
        position = self.position()
        self.unpublished.append(Cut(bundle.version, self.store.snapshot(
            bundle, trainer, self.clock(), position), position))
        log.info("cut model v%s (labels seen %s, ready %s)", bundle.version,
                 bundle.labels_seen, bundle.churn_ready)
        return bundle.version

    async def flush(self) -> None:
        """Store the versions cut so far, oldest first; safe to call again after a failure.

        When records learned since the last store wait and :attr:`checkpoint_after_s` has
        passed since it, the trainer state alone is stored, so their offsets can move.
        """
        owner, generation = self.owner, self.generation
        if self.trainer is None or owner is None:
            return  # released: nothing of this trainer is left to store
        while self.unpublished:
            cut = self.unpublished[0]
            written = await self.store.store(cut.version, cut.items, owner)
            if self.generation != generation:
                return  # released while writing: the queue is gone, and so is the claim
            if not written:
                self._fenced_off()
                return
            self.unpublished.pop(0)
            self.stored, self.stored_at = cut.position, self.clock()
            log.info("published model v%s", cut.version)
        position = self.position()
        if (position is not None and not _same_place(position, self.stored)
                and self.clock() - self.stored_at >= self.checkpoint_after_s):
            written = await self.store.store_checkpoint(
                self.store.checkpoint(self.trainer, position), owner)
            if self.generation != generation:
                return
            if not written:
                self._fenced_off()
                return
            self.stored, self.stored_at = position, self.clock()
            log.info("stored the trainer state at %s (no new version)", position)

    def _fenced_off(self) -> None:
        # Another worker claimed the trainer (a rebalance this one has not seen yet, or
        # `streamproc model reset`): what this one learned is not stored, and it starts
        # over from the stored state at its next load().
        log.warning("the trainer state was claimed by another owner (or reset); this "
                    "worker's unstored learning is dropped")
        self.release()

    def covered(self, offsets: Sequence[int]) -> int:
        """How many leading records of ``offsets`` the stored state holds: ack those."""
        return covered_prefix(offsets, self.stored)


def _after(offset: int, learned: int, size: int) -> tuple[int, int]:
    # A record fully learned is "the next record, none of it": a stored state then holds
    # record o exactly when o < its offset, whatever the record's size.
    return (offset + 1, 0) if learned >= size else (offset, learned)


def _same_place(a: TrainerPosition, b: TrainerPosition | None) -> bool:
    return b is not None and (a.offset, a.index) == (b.offset, b.index)


def _learn(trainer: Trainer, example: TrainingExample) -> str:
    """Learn one example; returns its kind (the metric's label)."""
    if isinstance(example, ProfileExample):
        trainer.learn_profile_features(example.customer_id, example.features, example.at)
        return "profile"
    trainer.learn_label(example)
    return "label"


def _parse(raw: bytes | None) -> DecodedRecord:
    if not raw:
        return DecodedRecord([])
    try:
        return decode_record(raw)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("skipping malformed training record: %s", type(exc).__name__)
        return DecodedRecord([])
