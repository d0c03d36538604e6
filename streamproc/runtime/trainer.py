"""The single owner of learning: consumes training examples, publishes signed model versions.

The training topic has one partition, so exactly one worker in the group runs
this at a time; after a rebalance the new owner resumes from the last saved
trainer state. Versions are cut every N examples (not on a wall-clock timer) so
the same example sequence gives the same version sequence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from streamproc.adapters.model_store import ModelStore
from streamproc.core.modelset import SnapshotRejected, Trainer
from streamproc.metrics import Metrics
from streamproc.runtime.scoring import parse_training_record
from streamproc.settings import ModelSettings

log = logging.getLogger(__name__)
FIRST_VERSION_AFTER = 200


class TrainerService:
    """Learns from training-topic records and publishes bundles through the model store.

    Learning and storing are apart so that a store which fails is retried without
    learning anything twice: :meth:`learn` (CPU only) cuts versions into
    :attr:`unpublished`, and :meth:`flush` stores them, oldest first, each one
    removed only once it is written.
    """

    def __init__(self, settings: ModelSettings, store: ModelStore, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.trainer: Trainer | None = None
        self.since_publish = 0
        #: Versions cut and not yet stored, oldest first: (version, what storing writes).
        self.unpublished: list[tuple[int, dict[str, bytes | str | int]]] = []

    def _new_trainer(self) -> Trainer:
        return Trainer(n_segments=self.settings.segments, seed=42,
                       churn_threshold=self.settings.churn_threshold,
                       min_labels=self.settings.min_labels_before_alerts)

    async def load(self) -> Trainer:
        """The trainer: resumed from its last stored state the first time, else a new one."""
        if self.trainer is None:
            try:
                self.trainer = await self.store.load_trainer()
            except SnapshotRejected as exc:
                self.metrics.model_rejected_snapshots.labels("trainer_state").inc()
                log.error("refused saved trainer state (%s); starting a new trainer", exc.reason)
                self.trainer = None
            if self.trainer is None:
                self.trainer = self._new_trainer()
            else:
                log.info("trainer resumed at model v%s", self.trainer.version)
        return self.trainer

    def learn(self, records: Sequence[bytes]) -> int:
        """Learn a batch of records, cutting a version every N examples. Returns learned.

        Call :meth:`load` first and :meth:`flush` after: this does no I/O.
        """
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("TrainerService.learn before load()")
        counts: dict[str, int] = {}
        for raw in records:
            try:
                examples = parse_training_record(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping malformed training record: %s", type(exc).__name__)
                continue
            for kind, payload in examples:
                if kind == "profile":
                    cid, at, features = payload
                    trainer.learn_profile_features(cid, features, at)
                else:
                    trainer.learn_label(payload)
                counts[kind] = counts.get(kind, 0) + 1
                self.since_publish += 1
                # Inside the loop: one record holds a whole batch's examples, and a take
                # of records can hold thousands; a version per call would come late.
                if self.since_publish >= self._threshold(trainer):
                    self.cut()
        for kind, n in counts.items():
            self.metrics.training_examples.labels(kind).inc(n)
        return sum(counts.values())

    def _threshold(self, trainer: Trainer) -> int:
        if trainer.version:
            return self.settings.snapshot_every_examples
        return min(FIRST_VERSION_AFTER, self.settings.snapshot_every_examples)

    def cut(self) -> int:
        """Freeze the models into the next version, to be stored by :meth:`flush`."""
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("TrainerService.cut before load()")
        bundle = trainer.bundle()
        self.unpublished.append((bundle.version,
                                 self.store.snapshot(bundle, trainer, self.clock())))
        self.since_publish = 0
        log.info("cut model v%s (labels seen %s, ready %s)", bundle.version,
                 bundle.labels_seen, bundle.churn_ready)
        return bundle.version

    async def flush(self) -> None:
        """Store the versions cut so far, oldest first; safe to call again after a failure."""
        while self.unpublished:
            version, items = self.unpublished[0]
            await self.store.store(version, items)
            self.unpublished.pop(0)
            log.info("published model v%s", version)
