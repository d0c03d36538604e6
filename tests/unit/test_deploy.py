"""The deployment files hang together: docker-compose.yml, Dockerfile, Prometheus and Grafana.

No Docker engine runs in CI, so this reads the files and checks what ``docker compose up``
would trip over: missing mounts, unhealthy dependencies, secrets in the repo, settings the
worker would reject, and dashboard queries on metrics that do not exist.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from faust.sensors.prometheus import FaustMetrics
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client import CollectorRegistry

from streamproc.metrics import create_metrics
from streamproc.metrics_doc import MetricDoc, metric_docs
from streamproc.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "streamproc.json"
WORKER_PORT = 6066
FAUST_PREFIX = "streamproc_faust"  # setup_prometheus_sensors(name_prefix=...) in runtime/app.py

# Series Prometheus makes itself, or that every scrape has.
STANDARD_SERIES = frozenset({
    "up", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE",
})


# ---------------------------------------------------------------------------- PromQL helpers

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_LABEL_VALUES = re.compile(r"\blabel_values\(\s*([^,()]+(?:\([^()]*\))?[^,()]*)\s*,\s*\w+\s*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?!\s*\()(?![\w:])")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                       "ignoring", "group_left", "group_right", "inf", "nan", "Inf", "NaN"})


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or Grafana ``label_values`` query) selects."""
    text = _STRING.sub('""', expr)
    text = _LABEL_VALUES.sub(r"\1", text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    return {m for m in _IDENT.findall(text) if m not in _KEYWORDS}


@cache
def known_series() -> frozenset[str]:
    """Every series name a streamproc worker's /metrics shows, plus Prometheus' own."""
    registry = CollectorRegistry()
    FaustMetrics.create(registry, FAUST_PREFIX)
    faust = [MetricDoc(f.name, f.type, (), f.documentation) for f in registry.collect()]
    # The process_* and python_* collectors create_metrics() adds to the worker's registry.
    runtime = CollectorRegistry()
    create_metrics(runtime)
    standard = {s.name for f in runtime.collect() for s in f.samples
                if not f.name.startswith("streamproc_")}
    names = {s for doc in [*metric_docs(), *faust] for s in doc.series}
    return frozenset(names | standard | STANDARD_SERIES)


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (topic) (rate(streamproc_events_total{outcome="applied", a=~"$x"}[$__rate_interval]))',
     {"streamproc_events_total"}),
    ("histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m]))) > 1e3 and on () b offset 6h",
     {"a_bucket", "b"}),
    ('label_values(up{job="streamproc"}, instance)', {"up"}),
    ("(sum(rate(x[6h])) or on () vector(0)) == 0 and time() - y > 5", {"x", "y"}),
    ('absent(up{job="by (x)"}) unless ignoring(instance) z * 3', {"up", "z"}),
])
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_known_series_cover_both_registries() -> None:
    assert {"streamproc_events_total", "streamproc_event_age_seconds_bucket", "streamproc_ready",
            "streamproc_faust_messages_received_total", "up", "process_cpu_seconds_total",
            "python_gc_collections_total", "streamproc_segment_info"} <= known_series()
    assert "streamproc_events" not in known_series()  # counters are scraped with _total


# ---------------------------------------------------------------------------- compose helpers

_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${X}``, ``${X:-d}``, ``${X:?e}``, ``${X:+v}``, ``$$``."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        val = env.get(name)
        unset_or_empty = not val if op and op.startswith(":") else val is None
        if op in (":-", "-"):
            return arg if unset_or_empty else str(val)
        if op in (":?", "?"):
            if unset_or_empty:
                raise KeyError(f"{name}: {arg}")
            return str(val)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return val or ""

    return _INTERPOLATION.sub(one, value)


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def environment(service: str) -> dict[str, str]:
    env = services()[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def volume_mounts(service: str) -> list[tuple[str, str]]:
    """(source, target) of every volume entry in short syntax."""
    mounts = []
    for entry in services()[service].get("volumes", []):
        assert isinstance(entry, str), f"{service}: use the short volume syntax"
        source, target = entry.split(":")[:2]
        mounts.append((source, target))
    return mounts


def host_path_of(service: str, container_path: str) -> Path:
    """The repository path that ``container_path`` in ``service`` comes from (bind mounts)."""
    target = PurePosixPath(container_path)
    for source, mount in volume_mounts(service):
        if source.startswith(".") and (target == PurePosixPath(mount)
                                       or PurePosixPath(mount) in target.parents):
            return ROOT / source / target.relative_to(mount)
    raise AssertionError(f"{container_path} is not bind-mounted into {service}")


def healthcheck_test(service: str) -> str:
    test = services()[service]["healthcheck"]["test"]
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL"), test
        return " ".join(test[1:])
    return str(test)


# ---------------------------------------------------------------------------- compose

def test_services_and_images() -> None:
    svc = services()
    assert set(svc) == {"kafka", "redis", "worker", "api", "prometheus", "grafana"}
    kafka_image = svc["kafka"]["image"]
    assert kafka_image.startswith(("apache/kafka:", "bitnami/kafka:")), kafka_image
    assert re.fullmatch(r"redis:7(\.\d+)*(-alpine)?", svc["redis"]["image"])
    assert svc["prometheus"]["image"].startswith("prom/prometheus:v")
    assert svc["grafana"]["image"].startswith("grafana/grafana:")
    for name, service in svc.items():
        image = service.get("image", "")
        if "build" not in service:
            assert ":" in image, f"{name}: pin the image tag"
            assert not image.endswith(":latest"), f"{name}: pin the image tag"


def test_kafka_is_single_node_kraft() -> None:
    env = environment("kafka")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env), "KRaft needs no ZooKeeper"
    assert "zookeeper" not in services()
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    # The cluster id is a base64url-encoded 16-byte UUID or the storage format step fails.
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    listeners = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    bootstrap = environment("worker")["STREAMPROC_KAFKA__BOOTSTRAP_SERVERS"]
    assert listeners["PLAINTEXT"] == bootstrap == "kafka:9092"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert ("kafka-data", env["KAFKA_LOG_DIRS"]) in volume_mounts("kafka")
    assert "Going multi-node" in COMPOSE.read_text(encoding="utf-8")


def test_redis_persists_with_aof_and_optional_password() -> None:
    redis = services()["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in command
    assert "--requirepass" in command
    assert "REDIS_PASSWORD" in command
    assert any(target == "/data" and not source.startswith(".")
               for source, target in volume_mounts("redis"))
    assert environment("redis")["REDIS_PASSWORD"] == "${REDIS_PASSWORD:-}"
    # With a password set, the shell line expands to a requirepass flag; without, to nothing.
    with_pw = interpolate(command, {})
    assert '${REDIS_PASSWORD:+--requirepass "$REDIS_PASSWORD"}' in with_pw


def test_worker_scales_and_is_configured_from_the_environment() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker, "a fixed name breaks --scale worker=N"
    assert "ports" not in worker, "a host port breaks --scale worker=N; Prometheus uses DNS"
    assert [str(p) for p in worker["expose"]] == [str(WORKER_PORT)]
    assert worker["build"]["context"] == "."
    assert (ROOT / worker["build"].get("dockerfile", "Dockerfile")).exists()
    env = environment("worker")
    assert env["STREAMPROC_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["STREAMPROC_REDIS__URL"] == "redis://redis:6379/0"
    assert env["STREAMPROC_MODELS__SIGNING_KEY"].startswith("${STREAMPROC_MODELS__SIGNING_KEY:?")
    with pytest.raises(KeyError, match="STREAMPROC_MODELS__SIGNING_KEY"):
        interpolate(env["STREAMPROC_MODELS__SIGNING_KEY"], {})


def test_worker_environment_is_accepted_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = {"STREAMPROC_MODELS__SIGNING_KEY": "k" * 32, "REDIS_PASSWORD": "pw"}
    for name, value in environment("worker").items():
        assert name.startswith("STREAMPROC_"), name
        monkeypatch.setenv(name, interpolate(value, shell))
    monkeypatch.chdir(ROOT / "deploy")  # no stray .env file
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.metrics.port == WORKER_PORT
    assert settings.redis.password is not None
    assert settings.redis.password.get_secret_value() == "pw"
    assert settings.models.signing_key is not None


def test_api_runs_serve_as_the_read_only_redis_user(monkeypatch: pytest.MonkeyPatch) -> None:
    api = services()["api"]
    assert api["command"] == ["streamproc", "serve"]
    assert api["image"] == services()["worker"]["image"]
    shell = {"STREAMPROC_MODELS__SIGNING_KEY": "k" * 32, "REDIS_API_PASSWORD": "ro-pw",
             "STREAMPROC_SERVE__TOKEN": "t" * 32}
    env = environment("api")
    with pytest.raises(KeyError, match="STREAMPROC_SERVE__TOKEN"):
        interpolate(env["STREAMPROC_SERVE__TOKEN"], {})
    for name, value in env.items():
        monkeypatch.setenv(name, interpolate(value, shell))
    monkeypatch.chdir(ROOT / "deploy")
    settings = load_settings()
    assert settings.serve.host == "0.0.0.0"  # inside its container
    assert [f"127.0.0.1:{settings.serve.port}:{settings.serve.port}"] == api["ports"]
    assert settings.redis.username == "streamproc-api"
    assert settings.redis.password is not None
    # The Redis service creates that user with read commands only, on streamproc's keys.
    redis = services()["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else \
        redis["command"]
    acl = command.split("--user", 1)[1].split()
    assert acl[0] == settings.redis.username
    assert f'"~{settings.redis.key_prefix}:*"' in acl
    assert acl[-3:] == ["-@all", "+@read", "+@connection"]
    assert environment("redis")["REDIS_API_PASSWORD"] == env["STREAMPROC_REDIS__PASSWORD"]
    check = api["healthcheck"]["test"]
    assert f"http://127.0.0.1:{settings.serve.port}/healthz" in check[3]


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|SIGNING_KEY|API_KEY|CREDENTIAL", re.I)


def test_no_secrets_in_the_repo() -> None:
    for name in services():
        for key, value in environment(name).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[^}]+\}", value), (
                    f"{name}.{key} must come from the environment, not the file")


def test_every_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check.get("test"), f"{name} has no healthcheck test"
        assert not check.get("disable", False)


def test_worker_healthcheck_gets_healthz_without_curl() -> None:
    test = services()["worker"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{WORKER_PORT}/healthz" in test[3]
    assert "curl" not in healthcheck_test("worker")
    compile(test[3], "<healthcheck>", "exec")  # valid Python


def test_depends_on_waits_for_healthy_services() -> None:
    svc = services()
    graph: dict[str, set[str]] = {}
    for name, service in svc.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, spec in deps.items():
            assert dep in svc, f"{name} depends on unknown {dep}"
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dep}: {spec}"
            assert "healthcheck" in svc[dep]
        graph[name] = set(deps)
    assert graph["worker"] == {"kafka", "redis"}
    assert graph["api"] == {"redis"}
    assert graph["grafana"] == {"prometheus"}

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"dependency cycle: {' -> '.join((*path, node))}"
        for nxt in graph[node]:
            visit(nxt, (*path, node))

    for name in graph:
        visit(name, ())


def test_mounted_files_exist_and_named_volumes_are_declared() -> None:
    declared = set(compose().get("volumes") or {})
    used = set()
    for name in services():
        for source, target in volume_mounts(name):
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared


def test_host_ports_are_unique_and_local() -> None:
    seen = []
    for name, service in services().items():
        for port in service.get("ports", []):
            host_ip, host_port, _ = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name}: {port} is reachable from the network"
            seen.append(host_port)
    assert len(seen) == len(set(seen))


# ---------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def _glob(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``*`` stays within one path segment, ``**`` spans."""
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token,
                                                                            re.escape(token))
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether docker leaves ``path`` out of the build context (it or a parent matches)."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob(pattern.lstrip("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_builds_a_non_root_worker_image() -> None:
    steps = dockerfile_instructions()
    froms = [rest.split()[0] for kw, rest in steps if kw == "FROM"]
    assert froms
    # Pinned to a patch release: a rebuild does not silently move to another Python.
    assert all(re.fullmatch(r"python:3\.11\.\d+-slim", f) for f in froms), froms
    assert len(set(froms)) == 1
    users = [rest for kw, rest in steps if kw == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    runs = [rest for kw, rest in steps if kw == "RUN"]
    # Dependencies only from the lock file, verified by hash; then the package alone.
    locked = [i for i, r in enumerate(runs)
              if re.search(r"pip install --require-hashes --no-deps -r requirements\.lock", r)]
    own = [i for i, r in enumerate(runs) if re.search(r"pip install --no-deps \.(\s|$)", r)]
    assert locked, runs
    assert own, runs
    assert locked[0] < own[0], runs
    assert not [r for r in runs if "pip install" in r and "--no-deps" not in r], runs
    exposed = [rest.split() for kw, rest in steps if kw == "EXPOSE"]
    assert exposed == [[str(WORKER_PORT), "8080"]]
    cmd = [json.loads(rest) for kw, rest in steps if kw == "CMD"]
    assert cmd[-1] == ["streamproc", "worker"]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'streamproc = "streamproc.cli:main"' in pyproject
    assert not any(kw in ("ENV", "ARG") and SECRET_NAME.search(rest) for kw, rest in steps)


def test_dockerfile_copy_sources_exist_and_are_not_ignored() -> None:
    patterns = dockerignore_patterns()
    sources = []
    for kw, rest in dockerfile_instructions():
        if kw not in ("COPY", "ADD"):
            continue
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        if any(a.startswith("--from") for a in shlex.split(rest)):
            continue
        sources += args[:-1]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} does not exist"
        assert not _ignored(source, patterns), f"COPY source {source} is in .dockerignore"
    # pyproject names README.md as the readme: pip install . fails without it.
    assert "README.md" in sources
    assert "pyproject.toml" in sources


def locked_requirements() -> dict[str, tuple[str, int]]:
    """requirements.lock as {normalised name: (version, number of hashes)}."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line)
        if pin:
            name = canonicalize_name(pin.group(1))
            pins[name] = (pin.group(2), 0)
        elif "--hash=sha256:" in line:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """The image installs requirements.lock only: it must satisfy pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = locked_requirements()
    assert all(hashes for _, hashes in pins.values()), "every pin needs its hashes"
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is missing from requirements.lock: refresh it (README)"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name][0]}, outside {requirement.specifier}")
    # The dev extra (test tools) stays out of the image.
    assert "pytest" not in pins


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["project"]["license"] == "Apache-2.0"
    (setuptools,) = [Requirement(r) for r in config["build-system"]["requires"]
                     if r.startswith("setuptools")]
    # 77 is the first release that takes project.license as an SPDX expression.
    assert not setuptools.specifier.contains("76.9")
    assert setuptools.specifier.contains("77.0")


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".git", ".env", ".venv", "tests", "streamproc/__pycache__/x.pyc",
                 "streamproc.egg-info", "sp-1234-data"):
        assert _ignored(path, patterns), path
    for path in ("streamproc/cli.py", "streamproc/adapters/profile_update.lua", "pyproject.toml"):
        assert not _ignored(path, patterns), path


# ---------------------------------------------------------------------------- Prometheus

def prometheus_config() -> tuple[Path, dict[str, Any]]:
    command = services()["prometheus"]["command"]
    flag = next(c for c in command if c.startswith("--config.file="))
    path = host_path_of("prometheus", flag.split("=", 1)[1])
    assert path == PROMETHEUS_DIR / "prometheus.yml"
    return path, yaml.safe_load(path.read_text(encoding="utf-8"))


def test_prometheus_config_rules_exist() -> None:
    path, config = prometheus_config()
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        assert (path.parent / rule_file).exists(), rule_file
    assert "alerts.yml" in config["rule_files"]


def test_prometheus_discovers_workers_by_dns() -> None:
    _, config = prometheus_config()
    (job,) = [j for j in config["scrape_configs"]
              if any(sd.get("names") == ["worker"] for sd in j.get("dns_sd_configs", []))]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # The label the rules find workers by, whatever the job is called.
    assert {"target_label": "service", "replacement": "streamproc"} in job["relabel_configs"]
    assert "static_configs" not in job
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"]
    assert sd["type"] == "A"
    assert sd["port"] == WORKER_PORT
    assert "worker" in services()


# ---------------------------------------------------------------------------- Grafana

def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    provisioning = host_path_of("grafana", "/etc/grafana/provisioning")
    assert provisioning == GRAFANA_DIR / "provisioning"
    ds = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text("utf-8"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in services()
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text("utf-8"))
    (provider,) = providers["providers"]
    assert host_path_of("grafana", provider["options"]["path"]) == DASHBOARD.parent
    home = environment("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path_of("grafana", home) == DASHBOARD


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def annotation_queries() -> list[str]:
    return [a["expr"] for a in dashboard()["annotations"]["list"] if "expr" in a]


def queries() -> list[str]:
    exprs = [t["expr"] for p in panels() for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs + annotation_queries()


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "streamproc"
    assert board["title"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels():
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    variables = [v["name"] for v in board["templating"]["list"]]
    assert variables[:3] == ["datasource", "job", "instance"]


def test_dashboard_queries_only_existing_metrics() -> None:
    known = known_series()
    used: set[str] = set()
    for expr in queries():
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"{expr!r} queries unknown metric(s) {sorted(unknown)}"
        used |= names
    ours = {d.family for d in metric_docs()}
    shown = {d.family for d in metric_docs() if set(d.series) & used}
    assert ours - shown == set(), f"metrics without a panel: {sorted(ours - shown)}"


def test_dashboard_works_for_any_job_name() -> None:
    """Jobs come from a variable filled from streamproc's own series; no job is named."""
    text = DASHBOARD.read_text(encoding="utf-8")
    assert not re.search(r'job\s*=\s*\\"', text), "a job name is hard-coded"
    job = next(v for v in dashboard()["templating"]["list"] if v["name"] == "job")
    assert job["query"]["query"] == "label_values(streamproc_ready, job)"
    panel_exprs = [t["expr"] for p in panels() for t in p.get("targets", [])]
    for expr in [*panel_exprs, *annotation_queries()]:
        for selector in re.findall(r"\b(?:streamproc|process|python|up)\w*\{[^}]*\}", expr):
            assert 'job=~"$job"' in selector, (expr, selector)
            assert 'instance=~"$instance"' in selector, (expr, selector)


def test_customers_by_segment_shows_names() -> None:
    panel = next(p for p in panels() if p["title"] == "Customers by segment")
    (target,) = panel["targets"]
    assert "group_left (name)" in target["expr"]
    assert "streamproc_segment_info" in target["expr"]
    # One name per segment even while workers switch model versions (no many-to-many).
    assert "topk by (segment) (1," in target["expr"]
    assert "{{name}}" in target["legendFormat"]


def test_model_version_changes_are_annotated() -> None:
    (note,) = [a for a in dashboard()["annotations"]["list"]
               if "streamproc_model_version" in a.get("expr", "")]
    assert note["enable"]
    assert note["expr"].startswith("changes(")
    assert note["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("title_words", [
    "events/s by topic and outcome", "dead letters/s by reason", "event age", "ingest to publish",
    "batch duration", "consumer lag", "redis round trip", "redis errors", "customers by segment",
    "segment changes", "churn alerts/s by risk level", "churn probability", "churn model quality",
    "log loss", "model version", "snapshot age", "cpu by worker", "resident memory",
])
def test_dashboard_has_the_expected_panels(title_words: str) -> None:
    titles = [p["title"].lower() for p in panels()]
    assert any(title_words in t for t in titles), title_words


def test_latency_panels_show_p50_p95_p99() -> None:
    for metric in ("streamproc_event_age_seconds", "streamproc_ingest_to_publish_seconds",
                   "streamproc_batch_duration_seconds"):
        exprs = [e for e in queries() if f"{metric}_bucket" in e]
        quantiles = {m for e in exprs for m in re.findall(r"histogram_quantile\(([\d.]+)", e)}
        assert quantiles == {"0.5", "0.95", "0.99"}, metric
