"""How a customer's scoring state is stored: msgpack after the profile, in the customer's key.

The state is a msgpack map: ``seg`` [segment id, since], ``al`` [last alert at, last
probability, value at risk of the open at-risk episode's last alert or nil], ``stg``
[lifecycle stage, since], ``pend`` [[scored at, model version, features, horizon s,
came back, spend after], ...], ``ah`` the next census check's snapshot frozen ahead
(same shape), ``rc`` [[event time, order total], ...] of the activity since the last
census check, ``fs`` the feature set of those features, ``la`` last activity, ``ls``
last census check, ``own`` the partition whose census schedule holds the customer,
``spr`` true once its events came on more than one partition. Snapshot features are
packed as bfloat16 in ``MODEL_FEATURES`` order, 2 bytes each; snapshots of another
feature set are dropped on reading (and counted), as their values cannot be matched to
the running features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from streamproc.core.labels import Snapshot
from streamproc.core.lifecycle import StageState
from streamproc.core.policies import AlertState, SegmentState
from streamproc.core.step import ScoringState
from streamproc.core.store import from_bfloat16, to_bfloat16
from streamproc.core.training import feature_list, feature_names, feature_set


def pack_features(features: Mapping[str, float]) -> bytes:
    """Model features in ``MODEL_FEATURES`` order as bfloat16, 2 bytes each."""
    return to_bfloat16(feature_list(features)).astype("<u2").tobytes()


def unpack_features(blob: bytes) -> dict[str, float]:
    """Inverse of :func:`pack_features`."""
    values = from_bfloat16(np.frombuffer(blob, dtype="<u2"))
    return dict(zip(feature_names(), values, strict=True))


def _pack_snapshot(s: Snapshot) -> list[Any]:
    return [s.scored_at, s.model_version, pack_features(s.features), s.horizon_s, s.came_back,
            s.spend_after]


def _unpack_snapshot(customer_id: str, row: list[Any]) -> Snapshot:
    t, v, f, h, back, spend = row
    return Snapshot(customer_id, float(t), unpack_features(f), int(v), float(h), bool(back),
                    float(spend))


def encode_state(state: ScoringState) -> bytes:
    """A scoring state as stored (see the module docstring)."""
    out: dict[str, Any] = {}
    if state.pending or state.ahead is not None:
        out["fs"] = feature_set()
    if state.pending:
        out["pend"] = [_pack_snapshot(s) for s in state.pending]
    if state.ahead is not None:
        out["ah"] = _pack_snapshot(state.ahead)
    if state.recent:
        out["rc"] = [list(r) for r in state.recent]
    if state.segment is not None:
        out["seg"] = [state.segment.segment_id, state.segment.since]
    if state.alert is not None:
        out["al"] = [state.alert.last_alert_at, state.alert.last_probability,
                     state.alert.episode_value_at_risk]
    if state.stage is not None:
        out["stg"] = [state.stage.stage, state.stage.since]
    if state.last_activity is not None:
        out["la"] = state.last_activity
    if state.last_snapshot is not None:
        out["ls"] = state.last_snapshot
    if state.owner is not None:
        out["own"] = state.owner
    if state.spread:
        out["spr"] = True
    packed: bytes = msgpack.packb(out, use_bin_type=True)
    return packed


def decode_state(customer_id: str, blob: bytes | None) -> tuple[ScoringState | None, int]:
    """A stored scoring state (None when there is none) and how many pending snapshots of
    another feature set were dropped."""
    if not blob:
        return None, 0
    raw: dict[str, Any] = msgpack.unpackb(blob, raw=False)
    pend, ahead = raw.get("pend", ()), raw.get("ah")
    stale = 0
    if (pend or ahead) and raw.get("fs") != feature_set():
        stale, pend, ahead = len(pend), (), None
    seg, al, stg = raw.get("seg"), raw.get("al"), raw.get("stg")
    return ScoringState(
        segment=SegmentState(int(seg[0]), float(seg[1])) if seg else None,
        alert=_alert_state(al) if al else None,
        stage=StageState(stg[0], float(stg[1])) if stg else None,
        pending=tuple(_unpack_snapshot(customer_id, row) for row in pend),
        ahead=None if ahead is None else _unpack_snapshot(customer_id, ahead),
        recent=tuple((float(t), float(a)) for t, a in raw.get("rc", ())),
        last_activity=raw.get("la"),
        last_snapshot=raw.get("ls"),
        owner=raw.get("own"),
        spread=bool(raw.get("spr", False)),
    ), stale


def _alert_state(al: list[Any]) -> AlertState:
    episode = None if al[2] is None else float(al[2])
    return AlertState(None if al[0] is None else float(al[0]), float(al[1]), episode)


def state_token(blob: bytes | None) -> str:
    """The compare-and-set token of a stored state: SHA-1 of its bytes ('' for none).

    ``scoring_write.lua`` computes the same (``redis.sha1hex``) over what it finds.
    """
    return hashlib.sha1(blob).hexdigest() if blob else ""  # noqa: S324 - identity, not security
