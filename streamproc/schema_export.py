"""Write the JSON Schemas and example documents of every Kafka contract to ``schemas/``.

Usage: ``python -m streamproc.schema_export [--check] [--out DIR]``. ``--check`` regenerates in
memory and exits 1 naming every file that drifted from the models. Schemas come from pydantic's
``model_json_schema`` (validation mode: what a producer may send / a consumer may parse) and are
written with sorted keys so diffs are stable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from streamproc.core.events import BatchEnvelope, ClickstreamEvent, PurchaseEvent, Rejection
from streamproc.core.outputs import (
    AlertValue,
    ChurnAlert,
    DeadLetter,
    LifecycleChanged,
    Reason,
    SegmentChanged,
    SegmentInfo,
)

__all__ = [
    "CONTRACTS",
    "DEFAULT_OUT",
    "REGENERATE_COMMAND",
    "check_schemas",
    "examples",
    "export_schemas",
    "main",
    "render",
]

DEFAULT_OUT: Final = Path(__file__).resolve().parent.parent / "schemas"
REGENERATE_COMMAND: Final = "python -m streamproc.schema_export"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

#: File stem -> model. The stem names ``<stem>.schema.json`` and ``examples/<stem>/``.
CONTRACTS: Final[Mapping[str, type[BaseModel]]] = {
    "clickstream_event": ClickstreamEvent,
    "purchase_event": PurchaseEvent,
    "batch_envelope": BatchEnvelope,
    "segment_changed": SegmentChanged,
    "churn_alert": ChurnAlert,
    "lifecycle_changed": LifecycleChanged,
    "dead_letter": DeadLetter,
}

# Fixed times: examples must be byte-identical on every run.
_T0: Final = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_T0_MS: Final = int(_T0.timestamp() * 1000)


def _clickstream_examples() -> dict[str, dict[str, Any]]:
    base = {"customer_id": "cust-0042", "session_id": "sess-9f1c", "channel": "web"}
    return {
        "session_start": {
            **base,
            "event_id": "evt-0001",
            "event_type": "session_start",
            "timestamp": "2024-05-01T12:00:00Z",
            "device": "desktop",
            "url": "https://shop.example.com/",
        },
        "page_view": {
            **base,
            "event_id": "evt-0002",
            "event_type": "page_view",
            "timestamp": "2024-05-01T14:00:05+02:00",
            "url": "https://shop.example.com/deals",
        },
        "product_view": {
            **base,
            "event_id": "evt-0003",
            "event_type": "product_view",
            "timestamp": _T0_MS + 12_000,
            "product_id": "sku-1234",
            "category": "shoes",
            "price": 89.9,
        },
        "search": {
            **base,
            "event_id": "evt-0004",
            "event_type": "search",
            "timestamp": "2024-05-01T12:00:20Z",
            "query": "trail running shoes",
        },
        "add_to_cart": {
            **base,
            "event_id": "evt-0005",
            "event_type": "add_to_cart",
            "timestamp": "2024-05-01T12:00:30Z",
            "product_id": "sku-1234",
            "price": 89.9,
            "quantity": 2,
        },
        "remove_from_cart": {
            **base,
            "event_id": "evt-0006",
            "event_type": "remove_from_cart",
            "timestamp": "2024-05-01T12:00:40Z",
            "product_id": "sku-1234",
            "quantity": 1,
        },
        "session_end": {
            **base,
            "event_id": "evt-0007",
            "event_type": "session_end",
            "timestamp": "2024-05-01T12:05:00Z",
        },
        "app_minimal": {
            "event_id": "evt-0008",
            "customer_id": "cust-0042",
            "event_type": "page_view",
            "timestamp": _T0_MS,
        },
    }


def _purchase_examples() -> dict[str, dict[str, Any]]:
    return {
        "order": {
            "event_id": "pur-0001",
            "customer_id": "cust-0042",
            "order_id": "ord-5001",
            "timestamp": "2024-05-01T12:06:00Z",
            "type": "order",
            "items": [
                {"product_id": "sku-1234", "category": "shoes", "quantity": 1, "unit_price": 89.9},
                {"product_id": "sku-0077", "category": "socks", "quantity": 3, "unit_price": 4.5},
            ],
            "total": 103.4,
            "currency": "EUR",
            "session_id": "sess-9f1c",
            "channel": "web",
        },
        "order_epoch_ms": {
            "event_id": "pur-0002",
            "customer_id": "cust-0042",
            "order_id": "ord-5002",
            "timestamp": _T0_MS + 3_600_000,
            "type": "order",
            "items": [{"product_id": "sku-0099", "quantity": 1, "unit_price": 19.99}],
            "total": 19.99,
            "currency": "USD",
        },
        "refund": {
            "event_id": "pur-0003",
            "customer_id": "cust-0042",
            "order_id": "ord-5001",
            "timestamp": "2024-05-03T09:00:00Z",
            "type": "refund",
            "items": [],
            "total": 89.9,
            "currency": "EUR",
        },
    }


def _output_examples() -> dict[str, dict[str, BaseModel]]:
    loyal = SegmentInfo(
        segment_id=2,
        name="loyal_regulars",
        profile={"recency_days": 6.0, "orders": 11.0, "spend": 812.5},
    )
    drifting = SegmentInfo(
        segment_id=4,
        name="drifting_away",
        profile={"recency_days": 47.0, "orders": 4.0, "spend": 260.0},
    )
    rejection = Rejection(
        reason="customer_mismatch",
        detail="events[1].customer_id: 'cust-0043' does not match message key 'cust-0042'",
        index=1,
        raw=b'{"event_id":"evt-0100","customer_id":"cust-0043"}',
    )
    whole = Rejection(
        reason="not_json",
        detail="invalid JSON: unexpected end of data: line 1 column 2 (char 1)",
        index=None,
        raw=b"{",
    )
    page_view = b'{"event_id":"evt-0200","customer_id":"cust-0042","event_type":"page_view",' \
        b'"timestamp":"2024-05-01T12:00:00Z"}'
    bare_array = Rejection(
        reason="not_object",
        detail="expected a JSON object (event or batch envelope), got list",
        index=None,
        raw=b"[" + b",".join([page_view] * 8) + b"]",
    )
    reasons = [
        Reason(feature="recency_days", contribution=0.31, text="no order for 41 days"),
        Reason(feature="sessions_7d", contribution=0.12, text="2 sessions in the last 7 days"),
    ]
    return {
        "segment_changed": {
            "first_assignment": SegmentChanged.build(
                customer_id="cust-0042",
                previous=None,
                current=loyal,
                rfm_tier="champions",
                value_tier="high",
                lifecycle_stage="active",
                model_version=3,
                event_time=_T0,
                emitted_at=_T0.replace(second=1),
            ),
            "moved": SegmentChanged.build(
                customer_id="cust-0042",
                previous=loyal,
                current=drifting,
                rfm_tier=None,
                value_tier="high",
                lifecycle_stage="at_risk",
                model_version=3,
                event_time=_T0.replace(month=6),
                emitted_at=_T0.replace(month=6, second=2),
            ),
        },
        "churn_alert": {
            "high": ChurnAlert.build(
                customer_id="cust-0042",
                churn_probability=0.82,
                threshold=0.7,
                risk_level="high",
                customer_value=812.5,
                value=AlertValue(expected_value=240.0, horizon_days=30.0, value_at_risk=196.8,
                                 value_tier="high", lifecycle_stage="at_risk", priority=1,
                                 trigger="entered_risk"),
                segment=drifting,
                reasons=reasons,
                model_version=5,
                event_time=_T0.replace(month=6),
                emitted_at=_T0.replace(month=6, second=3),
            ),
            "no_segment": ChurnAlert.build(
                customer_id="cust-0077",
                churn_probability=0.71,
                threshold=0.7,
                risk_level="medium",
                customer_value=45.0,
                value=AlertValue(expected_value=12.0, horizon_days=30.0, value_at_risk=8.52,
                                 value_tier="low", lifecycle_stage="at_risk", priority=3,
                                 trigger="value_at_risk_grew"),
                segment=None,
                reasons=[],
                model_version=5,
                event_time=_T0,
                emitted_at=_T0.replace(second=4),
            ),
        },
        "lifecycle_changed": {
            "at_risk": LifecycleChanged.build(
                customer_id="cust-0042", previous_stage="active", stage="at_risk",
                value_tier="high", expected_value=240.0, churn_probability=0.82,
                segment=drifting, model_version=5, event_time=_T0.replace(month=6),
                emitted_at=_T0.replace(month=6, second=3),
            ),
            "won_back": LifecycleChanged.build(
                customer_id="cust-0077", previous_stage="lapsed", stage="won_back",
                value_tier="medium", expected_value=61.0, churn_probability=0.31,
                segment=None, model_version=5, event_time=_T0.replace(month=7),
                emitted_at=_T0.replace(month=7, second=1),
            ),
        },
        "dead_letter": {
            "batch_element": DeadLetter.from_rejection(
                rejection,
                key=b"cust-0042",
                topic="clickstream",
                partition=3,
                offset=1_234_567,
                received_at=_T0,
            ),
            "whole_message": DeadLetter.from_rejection(
                whole,
                key=None,
                topic="purchases",
                partition=0,
                offset=42,
                received_at=_T0,
            ),
            # Cut to a small bound to show the shape; the worker's bound is DEAD_LETTER_MAX_BYTES.
            "truncated": DeadLetter.from_rejection(
                bare_array,
                key=b"cust-0042",
                topic="clickstream",
                partition=1,
                offset=9_001,
                received_at=_T0,
                max_bytes=900,
            ),
        },
    }


def examples() -> dict[str, dict[str, Any]]:
    """Contract stem -> example name -> JSON document (as producers would send it)."""
    clickstream = _clickstream_examples()
    purchases = _purchase_examples()
    docs: dict[str, dict[str, Any]] = {
        "clickstream_event": clickstream,
        "purchase_event": purchases,
        "batch_envelope": {
            "clickstream_session": {
                "batch_id": "batch-77",
                "sent_at": "2024-05-01T12:05:01Z",
                "events": [
                    clickstream[name] for name in ("session_start", "search", "session_end")
                ],
            },
            "purchases": {"events": [purchases["order"], purchases["refund"]]},
        },
    }
    for stem, models in _output_examples().items():
        docs[stem] = {name: model.model_dump(mode="json") for name, model in models.items()}
    return docs


def _dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema(mode="validation")}


def render() -> dict[str, str]:
    """Relative path -> file content of everything ``export_schemas`` writes."""
    files = {f"{stem}.schema.json": _dumps(_schema(model)) for stem, model in CONTRACTS.items()}
    for stem, docs in examples().items():
        for name, doc in docs.items():
            files[f"examples/{stem}/{name}.json"] = _dumps(doc)
    return files


def _managed(out_dir: Path) -> set[str]:
    """Files under out_dir this module owns: schemas and example documents."""
    found = {p.relative_to(out_dir).as_posix() for p in out_dir.glob("*.schema.json")}
    examples_dir = out_dir / "examples"
    if examples_dir.is_dir():
        found |= {p.relative_to(out_dir).as_posix() for p in examples_dir.rglob("*.json")}
    return found


def export_schemas(out_dir: Path) -> list[Path]:
    """Write every schema and example under out_dir, removing stale ones; returns written paths."""
    files = render()
    for stale in sorted(_managed(out_dir) - files.keys()) if out_dir.is_dir() else []:
        (out_dir / stale).unlink()
    written: list[Path] = []
    for rel, content in sorted(files.items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def check_schemas(out_dir: Path) -> list[str]:
    """Problems (missing, drifted or stale files) between out_dir and the models; [] if in sync."""
    files = render()
    problems: list[str] = []
    for rel, content in sorted(files.items()):
        path = out_dir / rel
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif path.read_text(encoding="utf-8") != content:
            problems.append(f"drifted: {path}")
    if out_dir.is_dir():
        problems.extend(
            f"stale: {out_dir / rel}" for rel in sorted(_managed(out_dir) - files.keys())
        )
    return problems


def regenerate_command(out_dir: Path) -> str:
    """The command that brings out_dir back in sync."""
    if out_dir.resolve() == DEFAULT_OUT:
        return REGENERATE_COMMAND
    return f"{REGENERATE_COMMAND} --out {out_dir}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE_COMMAND, description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if files drifted; write none")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="schemas directory")
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    if args.check:
        problems = check_schemas(out_dir)
        if problems:
            print("Schemas are out of date with the models:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            print(f"Regenerate with: {regenerate_command(out_dir)}", file=sys.stderr)
            return 1
        print(f"{out_dir}: schemas up to date")
        return 0
    written = export_schemas(out_dir)
    print(f"wrote {len(written)} files under {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
