"""Committed JSON Schemas match the models; every example validates against both."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from pydantic import BaseModel

from streamproc.core.events import DEFAULT_LIMITS as LIMITS
from streamproc.core.events import BatchEnvelope, decode_message
from streamproc.schema_export import (
    CONTRACTS,
    DEFAULT_OUT,
    REGENERATE_COMMAND,
    check_schemas,
    examples,
    export_schemas,
    main,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
NOW = datetime(2024, 6, 1, tzinfo=UTC)  # after every example's event time
EXAMPLES = [
    (stem, path)
    for stem in CONTRACTS
    for path in sorted((SCHEMAS / "examples" / stem).glob("*.json"))
]


def validator(stem: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{stem}.schema.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(stem: str, doc: Any) -> list[str]:
    return sorted(f"{e.json_path}: {e.message}" for e in validator(stem).iter_errors(doc))


def test_schemas_match_models() -> None:
    assert SCHEMAS == DEFAULT_OUT
    problems = check_schemas(SCHEMAS)
    assert not problems, (
        "JSON schemas drifted from the models:\n  "
        + "\n  ".join(problems)
        + f"\nRegenerate with: {REGENERATE_COMMAND}"
    )


@pytest.mark.parametrize("stem", list(CONTRACTS))
def test_every_contract_has_examples(stem: str) -> None:
    assert len([s for s, _ in EXAMPLES if s == stem]) >= 2


@pytest.mark.parametrize(("stem", "path"), EXAMPLES, ids=[f"{s}/{p.stem}" for s, p in EXAMPLES])
def test_example_validates_against_schema_and_model(stem: str, path: Path) -> None:
    raw = path.read_bytes()
    doc = orjson.loads(raw)
    assert schema_errors(stem, doc) == []
    model: type[BaseModel] = CONTRACTS[stem]
    parsed = model.model_validate(doc)
    if stem == "batch_envelope":
        assert isinstance(parsed, BatchEnvelope)
        source = "purchases" if "order_id" in doc["events"][0] else "clickstream"
        key = doc["events"][0]["customer_id"].encode()
        decoded = decode_message(raw, key, source, limits=LIMITS, now=NOW)  # type: ignore[call-overload]
        assert decoded.rejections == []
        assert len(decoded.events) == len(doc["events"])
    elif stem in ("clickstream_event", "purchase_event"):
        source = "clickstream" if stem == "clickstream_event" else "purchases"
        decoded = decode_message(raw, None, source, limits=LIMITS, now=NOW)  # type: ignore[call-overload]
        assert decoded.rejections == []
    else:
        assert parsed.model_dump(mode="json") == doc


def _example(stem: str, name: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(examples()[stem][name]))  # deep copy
    return copy


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _set_item(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["items"][0].__setitem__(key, value)


# (contract, example, mutation, JSON-schema error path, pydantic error text)
MALFORMED = [
    ("clickstream_event", "page_view", _without("customer_id"), "$", "customer_id: Field required"),
    (
        "clickstream_event",
        "page_view",
        _set("event_type", "checkout"),
        "$.event_type",
        "event_type: Input should be 'session_start'",
    ),
    (
        "clickstream_event",
        "search",
        _without("query"),
        "$",
        "query: Field required for event_type 'search'",
    ),
    (
        "clickstream_event",
        "product_view",
        _set("product_id", None),
        "$.product_id",
        "product_id: Field required for event_type 'product_view'",
    ),
    (
        "clickstream_event",
        "add_to_cart",
        _set("quantity", 0),
        "$.quantity",
        "quantity: Input should be greater than or equal to 1",
    ),
    (
        "clickstream_event",
        "add_to_cart",
        _set("price", -1),
        "$.price",
        "price: Input should be greater than or equal to 0",
    ),
    (
        "clickstream_event",
        "page_view",
        _set("timestamp", "2024-05-01T12:00:00"),
        "$.timestamp",
        "timestamp: Timestamp must carry a UTC offset",
    ),
    (
        "clickstream_event",
        "page_view",
        _set("customer_id", "x" * 129),
        "$.customer_id",
        "customer_id: String should have at most 128 characters",
    ),
    (
        "purchase_event",
        "order",
        _set("currency", "eur"),
        "$.currency",
        "currency: String should match pattern",
    ),
    (
        "purchase_event",
        "order",
        _set("items", []),
        "$.items",
        "items: An order needs at least 1 item",
    ),
    (
        "purchase_event",
        "order",
        _set_item("quantity", 0),
        "$.items[0].quantity",
        "items[0].quantity: Input should be greater than or equal to 1",
    ),
    (
        "purchase_event",
        "refund",
        _set("total", 0),
        "$.total",
        "total: Input should be greater than 0 for a refund",
    ),
    (
        "purchase_event",
        "order",
        _set("total", -1.0),
        "$.total",
        "total: Input should be greater than or equal to 0",
    ),
]


@pytest.mark.parametrize(
    ("stem", "name", "mutate", "schema_path", "reason"),
    MALFORMED,
    ids=[r[4].split(":")[0] + "-" + r[1] for r in MALFORMED],
)
def test_malformed_documents_fail_with_precise_reasons(
    stem: str,
    name: str,
    mutate: Callable[[dict[str, Any]], None],
    schema_path: str,
    reason: str,
) -> None:
    doc = _example(stem, name)
    mutate(doc)
    errors = schema_errors(stem, doc)
    assert any(e.startswith(f"{schema_path}:") for e in errors), errors
    source = "clickstream" if stem == "clickstream_event" else "purchases"
    decoded = decode_message(orjson.dumps(doc), None, source, limits=LIMITS, now=NOW)  # type: ignore[call-overload]
    (rejection,) = decoded.rejections
    assert reason in rejection.detail


def test_total_mismatch_is_model_only() -> None:
    """JSON Schema cannot sum line items; the model rejects, naming both numbers."""
    doc = _example("purchase_event", "order")
    doc["total"] = 150.0
    assert schema_errors("purchase_event", doc) == []
    decoded = decode_message(orjson.dumps(doc), None, "purchases", limits=LIMITS, now=NOW)
    (rejection,) = decoded.rejections
    assert rejection.reason == "total_mismatch"
    assert "total 150.0 differs from sum(quantity * unit_price) 103.4" in rejection.detail


def test_output_examples_reject_unknown_fields_in_schema() -> None:
    doc = _example("churn_alert", "high")
    doc["surprise"] = True
    assert any("Additional properties" in e for e in schema_errors("churn_alert", doc))


def test_export_then_check_round_trip(tmp_path: Path) -> None:
    written = export_schemas(tmp_path)
    assert {p.name for p in written} >= {f"{stem}.schema.json" for stem in CONTRACTS}
    assert check_schemas(tmp_path) == []
    content = (tmp_path / "clickstream_event.schema.json").read_text(encoding="utf-8")
    assert content.endswith("}\n")
    assert json.loads(content) == json.loads(
        (SCHEMAS / "clickstream_event.schema.json").read_text(encoding="utf-8")
    )


def test_check_reports_drift_missing_and_stale(tmp_path: Path) -> None:
    export_schemas(tmp_path)
    (tmp_path / "churn_alert.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "dead_letter.schema.json").unlink()
    (tmp_path / "examples" / "churn_alert" / "old.json").write_text("{}\n", encoding="utf-8")
    assert check_schemas(tmp_path) == [
        f"drifted: {tmp_path / 'churn_alert.schema.json'}",
        f"missing: {tmp_path / 'dead_letter.schema.json'}",
        f"stale: {tmp_path / 'examples' / 'churn_alert' / 'old.json'}",
    ]
    export_schemas(tmp_path)  # regenerating also removes stale examples
    assert check_schemas(tmp_path) == []


def test_cli_check_names_files_and_regenerate_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "purchase_event.schema.json").write_text("{}\n", encoding="utf-8")
    assert main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"drifted: {tmp_path / 'purchase_event.schema.json'}" in err
    assert f"Regenerate with: {REGENERATE_COMMAND} --out {tmp_path}" in err
