"""``streamproc model`` against a real Redis: status, roll back, refuse a bad version, reset."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import make_client
from streamproc.cli import main
from streamproc.core.features import MODEL_FEATURES
from streamproc.core.modelset import Trainer
from streamproc.runtime.embedded import RedisCluster
from streamproc.settings import to_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("deployment", ["single", "cluster"])
def test_status_rollback_and_reset(make_settings: Any, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str], deployment: str,
                                   request: pytest.FixtureRequest) -> None:
    """Against one redis-server, then a Redis Cluster (model keys share the {model} slot)."""
    if deployment == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        settings = make_settings(redis={"url": cluster.url, "cluster": True})
    else:
        settings = make_settings()
    for name, value in to_env(settings).items():
        monkeypatch.setenv(name, value)

    async def publish_two() -> None:
        store = ModelStore(make_client(settings.redis), settings.redis.key_prefix,
                           settings.models.signing_key.get_secret_value().encode())
        trainer = Trainer(n_segments=3)
        for i in range(50):
            trainer.learn_profile_features(f"c{i}", {n: float(i % 7) for n in MODEL_FEATURES},
                                           float(i))
        await store.publish(trainer.bundle(), trainer, 1.0)
        await store.publish(trainer.bundle(), trainer, 2.0)
        await store.client.aclose()

    assert main(["model", "status"]) == 0
    assert "no model version" in capsys.readouterr().out
    asyncio.run(publish_two())
    code = main(["model", "status", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert orjson.loads(captured.out)["version"] == 2
    assert main(["model", "rollback", "1"]) == 0
    assert "now v1" in capsys.readouterr().out
    assert main(["model", "status", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["version"] == 1
    assert main(["model", "rollback", "99"]) == 1  # not stored: refused, current unchanged
    assert "model version 99 is not stored; kept versions: 1-2 " in capsys.readouterr().err
    assert main(["model", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].startswith("        2  1970-01-01T00:00:02Z")  # newest first
    assert listing[2].startswith("*       1  1970-01-01T00:00:01Z")  # * current
    assert main(["model", "status"]) == 0
    status = capsys.readouterr().out
    assert "model v1, published 1970-01-01T00:00:01Z" in status
    assert "stored versions  1-2" in status
    assert "threshold 0.70" in status
    assert main(["model", "reset"]) == 2
    assert main(["model", "reset", "--yes"]) == 0
    assert main(["model", "status"]) == 0
    assert "no model version" in capsys.readouterr().out
