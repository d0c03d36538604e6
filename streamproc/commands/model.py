"""``streamproc model``: inspect, list, roll back or reset the published model versions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from streamproc.adapters import keys
from streamproc.adapters.model_store import KEEP_VERSIONS, ModelStore
from streamproc.adapters.redis_store import make_client
from streamproc.commands import CommandError, utc_now
from streamproc.core.modelset import ModelBundle, SnapshotRejected
from streamproc.settings import Settings
from streamproc.times import iso_utc


def _store(settings: Settings) -> ModelStore:
    key = settings.models.signing_key
    if key is None:
        raise ValueError("STREAMPROC_MODELS__SIGNING_KEY is required to verify model versions")
    return ModelStore(make_client(settings.redis), settings.redis.key_prefix,
                      key.get_secret_value().encode())


async def stored_versions(store: ModelStore) -> list[int]:
    """Every version number kept in Redis, ascending."""
    prefix = keys.model_key(store.prefix, "bundle:")
    found = []
    async for raw in store.client.scan_iter(match=prefix + "*", count=100):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        suffix = name[len(prefix):]
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _age_s(published_at: float) -> float | None:
    return max(0.0, utc_now().timestamp() - published_at) if published_at else None


def _status_doc(bundle: ModelBundle, published_at: float) -> dict[str, Any]:
    q = bundle.quality
    labels = int(q.get("labels_seen", bundle.labels_seen))
    positives = int(q.get("positives_seen", 0))
    return {
        "version": bundle.version,
        "published_at": iso_utc(published_at) if published_at else None,
        "age_s": _age_s(published_at),
        "churn_ready": bundle.churn_ready,
        "churn_threshold": bundle.churn_threshold,
        "labels_seen": labels,
        "positives_seen": positives,
        # Share of churned labels: what precision is worth against alerting everyone.
        "base_rate": positives / labels if labels else None,
        "quality": {name: _finite(q.get(name)) for name in (
            "roc_auc", "log_loss", "brier", "precision", "recall", "base_rate",
            "predicted_positive_rate", "mean_probability", "window") if name in q},
        "horizon_days": bundle.horizon_days,
        "typical_gap_days": bundle.typical_gap_days,
        "segments": {sid: seg.name for sid, seg in sorted(bundle.segments.items())},
    }


async def model_status(settings: Settings) -> dict[str, Any]:
    """The current version, its age, threshold, quality and base rate, and the kept versions."""
    store = _store(settings)
    try:
        version = await store.current_version()
        kept = await stored_versions(store)
        if not version:
            return {"version": None, "stored_versions": kept}
        loaded = await store.load_bundle(version)
        doc = _status_doc(loaded.bundle, loaded.published_at)
        doc["stored_versions"] = kept
        return doc
    finally:
        await store.client.aclose()


async def model_list(settings: Settings) -> list[dict[str, Any]]:
    """One row per kept version (newest first): published, age, readiness and quality.

    A version that does not verify is listed with its refusal instead of its figures.
    """
    store = _store(settings)
    try:
        current = await store.current_version()
        rows = []
        for version in reversed(await stored_versions(store)):
            try:
                loaded = await store.load_bundle(version)
            except SnapshotRejected as exc:
                rows.append({"version": version, "current": version == current,
                             "refused": exc.reason})
                continue
            doc = _status_doc(loaded.bundle, loaded.published_at)
            rows.append({"version": version, "current": version == current,
                         "published_at": doc["published_at"], "age_s": doc["age_s"],
                         "churn_ready": doc["churn_ready"], "labels_seen": doc["labels_seen"],
                         "roc_auc": doc["quality"].get("roc_auc")})
        return rows
    finally:
        await store.client.aclose()


def describe_versions(versions: Sequence[int]) -> str:
    """``5-9, 12`` for [5, 6, 7, 8, 9, 12]; ``none`` for []."""
    if not versions:
        return "none"
    runs: list[list[int]] = []
    for v in versions:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


async def model_rollback(settings: Settings, version: int) -> int:
    """Point every worker at an older stored version (verified first); returns it.

    A version that is not kept is a CommandError naming the versions that are.
    """
    store = _store(settings)
    try:
        kept = await stored_versions(store)
        if version not in kept:
            current = await store.current_version()
            raise CommandError(
                f"model version {version} is not stored; kept versions: "
                f"{describe_versions(kept)} (the last {KEEP_VERSIONS} are kept"
                + (f"; current v{current})" if current else ")"))
        await store.roll_back(version)
        return version
    finally:
        await store.client.aclose()


async def model_reset(settings: Settings) -> int:
    """Delete every version and the trainer state; returns the number of keys removed."""
    store = _store(settings)
    try:
        return await store.reset()
    finally:
        await store.client.aclose()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def _ratio(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_status(status: dict[str, Any]) -> list[str]:
    """The lines ``model status`` prints."""
    kept = describe_versions(status.get("stored_versions", []))
    if status["version"] is None:
        return ["no model version published yet", f"stored versions: {kept}"]
    q = status["quality"]
    ready = "ready to alert" if status["churn_ready"] else "warming up (no alerts yet)"
    base = status["base_rate"]
    window_rate = q.get("base_rate")
    return [
        f"model v{status['version']}, published {status['published_at'] or '-'} "
        f"({_duration(status['age_s'])} ago)",
        f"churn model      {ready}, threshold {status['churn_threshold']:.2f}",
        f"horizon          {status['horizon_days']:g} days (typical gap between orders "
        f"{status['typical_gap_days']:.0f} days)",
        f"labels           {status['labels_seen']:,} "
        f"({status['positives_seen']:,} churned, base rate "
        f"{'-' if base is None else f'{base:.1%}'})",
        f"quality          ROC AUC {_ratio(q.get('roc_auc'))}, log loss "
        f"{_ratio(q.get('log_loss'))}, precision {_ratio(q.get('precision'))} and recall "
        f"{_ratio(q.get('recall'))} at the threshold",
        f"  (last {int(q.get('window') or 0):,} labels; churned share there "
        f"{'-' if window_rate is None else f'{window_rate:.1%}'})",
        "segments         " + ", ".join(f"{sid} {name}"
                                        for sid, name in status["segments"].items()),
        f"stored versions  {kept}",
    ]


def format_list(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The lines ``model list`` prints (fits 80 columns)."""
    if not rows:
        return ["no model version stored"]
    out = [f"{'':2}{'version':>7}  {'published':<20}  {'age':>9}  {'churn':<10}  "
           f"{'labels':>8}  {'ROC AUC':>7}"]
    for r in rows:
        mark = "* " if r["current"] else "  "
        if "refused" in r:
            out.append(f"{mark}{r['version']:>7}  refused: {r['refused']}")
            continue
        published = (r["published_at"] or "-")[:19] + ("Z" if r["published_at"] else "")
        out.append(f"{mark}{r['version']:>7}  {published:<20}  {_duration(r['age_s']):>9}  "
                   f"{'ready' if r['churn_ready'] else 'warming up':<10}  "
                   f"{r['labels_seen']:>8,}  {_ratio(r['roc_auc']):>7}")
    out.append("* current version")
    return out
