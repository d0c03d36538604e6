"""Alerting rules: promtool validates them and runs their unit tests; they use real metrics.

promtool comes with Debian's ``prometheus`` package. Without it these tests fail (they
never skip): CI installs it in ``.ci/run``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_deploy import known_series, promql_metric_names

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: apt-get install prometheus (Debian's package ships "
                    "promtool; .ci/run installs it)", pytrace=False)
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=PROMETHEUS_DIR, capture_output=True,
                          text=True, timeout=120, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


RULE_NAMES = [rule["alert"] for rule in alert_rules()]


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    # Checks prometheus.yml and, through rule_files, loads alerts.yml from its directory.
    result = run_promtool("check", "config", CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_use_only_existing_metrics() -> None:
    known = known_series()
    for rule in alert_rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        unknown = names - known
        assert not unknown, f"{rule['alert']} uses unknown metric(s) {sorted(unknown)}"


@pytest.mark.parametrize("name", RULE_NAMES)
def test_rule_is_actionable(name: str) -> None:
    rule = next(r for r in alert_rules() if r["alert"] == name)
    assert name.startswith("Streamproc")
    assert rule["labels"]["severity"] in ("critical", "warning")
    for key in ("summary", "description", "runbook_url"):
        assert str(rule["annotations"].get(key, "")).strip(), f"{name} lacks {key}"
    assert "runbook" not in rule["annotations"], f"{name}: the annotation is runbook_url"


def readme_anchors() -> set[str]:
    """GitHub-style anchors of README.md's headings."""
    readme = PROMETHEUS_DIR.parents[1] / "README.md"
    anchors = set()
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("name", RULE_NAMES)
def test_runbook_url_points_at_the_alerts_readme_section(name: str) -> None:
    rule = next(r for r in alert_rules() if r["alert"] == name)
    url = rule["annotations"]["runbook_url"]
    assert url == ('{{ or $externalLabels.runbook_base "README.md" }}#' + name.lower())
    assert name.lower() in readme_anchors(), f"README.md has no section {name}"


def test_rules_name_no_scrape_job() -> None:
    """Workers are found by the service="streamproc" target label, whatever the job is called."""
    text = RULES.read_text(encoding="utf-8")
    assert not re.search(r"job\s*=~?\s*\"", text)
    (job,) = [j for j in yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["scrape_configs"]
              if any(sd.get("names") == ["worker"] for sd in j.get("dns_sd_configs", []))]
    assert {"target_label": "service", "replacement": "streamproc"} in job["relabel_configs"]


@pytest.mark.parametrize("name", RULE_NAMES)
def test_rule_has_firing_and_quiet_test_cases(name: str) -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
             for case in test.get("alert_rule_test", []) if case["alertname"] == name]
    assert any(case.get("exp_alerts") for case in cases), f"{name} never fires in a test"
    assert any(not case.get("exp_alerts") for case in cases), f"{name} is never tested quiet"
    for case in cases:
        for alert in case.get("exp_alerts") or []:
            # Spelled-out annotations make promtool check the templates render as intended.
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}


@pytest.mark.parametrize(("name", "fragments", "for_"), [
    ("StreamprocWorkerDown", ['up{service="streamproc"} == 0'], "1m"),
    ("StreamprocConsumerLagGrowing",
     ["streamproc_consumer_lag_messages", "delta(", "[10m]", "> 1000"], "10m"),
    ("StreamprocDeadLetterRateHigh",
     ["rate(streamproc_dead_letters_total[5m])", "rate(streamproc_events_total[5m])"], "5m"),
    ("StreamprocRedisDown", ["streamproc_redis_up == 0"], "1m"),
    ("StreamprocRedisStateLost", ["streamproc_redis_state_lost == 1"], None),
    ("StreamprocChurnModelQualityLow",
     ["streamproc_churn_roc_auc < 0.7", "streamproc_churn_model_ready == 1"], "30m"),
    ("StreamprocChurnModelDegenerate",
     ["streamproc_churn_predicted_positive_rate) < 0.02",
      "streamproc_churn_predicted_positive_rate) > 0.98", "streamproc_churn_roc_auc) <= 0.55",
      "streamproc_churn_model_ready == 1"], "1h"),
    ("StreamprocModelSnapshotStale", ["streamproc_model_snapshot_age_seconds > 3600"], "5m"),
    ("StreamprocChurnAlertRateHigh", ["3 * sum(rate(streamproc_churn_alerts_total[1d]))"], "15m"),
    ("StreamprocChurnAlertsStopped",
     ["streamproc_churn_alerts_total", "streamproc_churn_model_ready"], "30m"),
])
def test_required_rules(name: str, fragments: list[str], for_: str | None) -> None:
    rule = next((r for r in alert_rules() if r["alert"] == name), None)
    assert rule is not None, f"{name} is missing from alerts.yml"
    expr = " ".join(rule["expr"].split())
    for fragment in fragments:
        assert fragment in expr, f"{name}: {fragment!r} not in {expr!r}"
    assert rule.get("for") == for_
