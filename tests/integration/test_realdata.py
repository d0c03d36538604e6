"""The real-data evaluation end to end on 300 CDNOW customers (about 40 s).

Its own broker, redis-server and worker process, the real ``streamproc replay --wait``,
the read API, and the baselines fitted in the same run.
"""

from __future__ import annotations

import argparse

import orjson
import pytest
from rich.console import Console

from load_tests import cdnow
from load_tests.realdata import HORIZON_LABEL, LONG_LABEL, choose_customers, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_harness_on_300_customers() -> None:
    args = argparse.Namespace(customers=300, seed=0, set=[], settle_s=3.0)
    console = Console(record=True, width=132)
    doc = run(args, console)

    orders = choose_customers(cdnow.read_orders(), 300, 0)
    calibration = cdnow.Split().calibration(orders)
    assert doc["customers"] == len({o.customer_id for o in calibration})
    assert doc["missing_from_read_api"] == 0  # free orders and 1997 dates included
    replay = doc["streamproc"]["replay"]
    assert replay["sent_events"] == len(calibration)
    assert replay["rejected"] == 0
    assert replay["wait"]["dead_letters"] == 0
    assert doc["streamproc"]["model"]["version"] >= 1

    for label in (LONG_LABEL, HORIZON_LABEL):
        scores = doc["scores"][label]
        assert set(scores) == {"streamproc", "BG/NBD", "logistic RFM+tenure",
                               "streamproc recency_days"}
        for name, metrics in scores.items():
            assert metrics["customers"] == doc["customers"]
            if name != "streamproc recency_days":
                assert sum(b["customers"] for b in metrics["calibration"]) == doc["customers"]
    # Scores and labels line up customer by customer: the longer idle, the likelier gone
    # (scored as of each customer's own last event this was 0.25; at random 0.5).
    long_term = doc["scores"][LONG_LABEL]
    for name in ("BG/NBD", "logistic RFM+tenure", "streamproc recency_days"):
        assert long_term[name]["roc_auc"] > 0.65, (name, long_term[name])
    alerts = doc["alerts"]["streamproc (streamed)"]
    assert alerts["alerts"] == doc["streamproc"]["alerts"]
    orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
