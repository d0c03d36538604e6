"""Rich tables of a real-data evaluation document (``load_tests.realdata``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _label_title(doc: Mapping[str, Any], label: str) -> str:
    spec = doc["labels"][label]
    return (f"churn = no order in the {spec['days']:g} days after {doc['dataset']['cutoff'][:10]}"
            f" (base rate {_num(spec['base_rate'])}, {doc['customers']} customers)")


def score_table(doc: Mapping[str, Any], label: str) -> Table:
    """ROC AUC, PR AUC, Brier and the worst calibration gap of every score for one label."""
    table = Table(title=_label_title(doc, label), title_justify="left")
    for column in ("score", "ROC AUC", "PR AUC", "Brier", "max calibration gap"):
        table.add_column(column, justify="left" if column == "score" else "right")
    for name, m in doc["scores"][label].items():
        table.add_row(name, _num(m["roc_auc"]), _num(m["pr_auc"]), _num(m["brier"]),
                      _num(m["max_calibration_gap"]))
    return table


def calibration_table(doc: Mapping[str, Any], label: str) -> Table:
    """Deciles of each probability: mean predicted / observed churn rate (customers)."""
    scores = {n: m for n, m in doc["scores"][label].items() if m["calibration"]}
    table = Table(title=f"calibration, {label}: mean predicted / observed (customers) per "
                  "decile of the prediction", title_justify="left")
    table.add_column("decile", justify="right")
    for name in scores:
        table.add_column(name, justify="right")
    rows = max((len(m["calibration"]) for m in scores.values()), default=0)
    for i in range(rows):
        cells = []
        for m in scores.values():
            bins = m["calibration"]
            cells.append("" if i >= len(bins) else
                         f"{bins[i]['mean_predicted']:.3f} / {bins[i]['observed']:.3f} "
                         f"({bins[i]['customers']})")
        table.add_row(str(i + 1), *cells)
    return table


def alert_table(doc: Mapping[str, Any]) -> Table:
    """Streamed alerts beside the alerts each probability would raise at the cutoff."""
    horizon = doc["labels"]["churn_horizon"]["days"]
    table = Table(title=f"alerts (threshold {doc['threshold']:g}; right = no order within "
                  f"{horizon:g} days after the alert; covered = share of the 39-week "
                  "churners' calibration spend with a standing alert)", title_justify="left")
    table.add_column("source")
    for column in ("alerts", "customers alerted", "per customer", "precision",
                   "churned value covered"):
        table.add_column(column, justify="right")
    for name, a in doc["alerts"].items():
        table.add_row(name, str(a["alerts"]), str(a["alerted_customers"]),
                      _num(a["alerts_per_customer"]), _num(a["precision"]),
                      _num(a["churned_value_covered"]))
    return table


def value_table(doc: Mapping[str, Any]) -> Table:
    """Expected value against the spend that followed the cutoff."""
    v = doc["value"]
    table = Table(title=f"value: spend in the {v['holdout_days']} days after the cutoff "
                  f"(total {v['holdout_spend']:,.2f} USD) against each prediction",
                  title_justify="left")
    for column in ("prediction", "Spearman", "top-10 % revenue share"):
        table.add_column(column, justify="left" if column == "prediction" else "right")
    for name, m in v["scores"].items():
        table.add_row(name, _num(m["spearman"]), _num(m["top10_share"]))
    return table


def print_report(doc: Mapping[str, Any], console: Console) -> None:
    """Every table of the document, then one line on the streaming model."""
    for label in doc["labels"]:
        console.print(score_table(doc, label))
    for label in doc["labels"]:
        console.print(calibration_table(doc, label))
    console.print(value_table(doc))
    console.print(alert_table(doc))
    s = doc["streamproc"]
    model = s.get("model") or {}
    quality = ", ".join(f"{k}={_num(v)}" for k, v in (model.get("quality") or {}).items())
    console.print(f"streamproc model v{model.get('version', '-')} (churn ready "
                  f"{model.get('churn_ready', '-')}, {model.get('labels_seen', '-')} labels; "
                  f"{quality or 'no quality'}), horizon {s['horizon_days']:g} days; "
                  f"{doc['streamproc_probabilities']} churn probabilities, "
                  f"{doc['missing_from_read_api']} customers missing from the read API; "
                  f"replay + wait {s.get('replay_seconds', '-')}s, run {s.get('seconds', '-')}s")
