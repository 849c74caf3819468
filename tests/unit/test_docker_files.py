"""docker/: the container set-up for a real cluster, checked without a Docker engine.

The compose file is parsed as YAML and the Dockerfile as text; every check compares them with the
repository they build from (paths, settings keys, jar coordinates, versions), so a rename on
either side fails here instead of at `docker compose up` on someone's cluster.
"""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from schemas.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
POM = ROOT / "scripts" / "maven" / "flink-jars.pom.xml"
CLUSTER_POM = ROOT / "scripts" / "maven" / "flink-cluster-jars.pom.xml"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"

REQUIRED_SERVICES = {"jobmanager", "taskmanager", "kafka", "postgres", "job-submitter", "ledger"}
# Ports that may be published on all interfaces (none today): "host:container" -> why.
DOCUMENTED_PUBLIC_PORTS: dict[str, str] = {}
MAVEN_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "no services in compose"
    return doc


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _pom_artifacts() -> dict[str, str]:
    root = ET.parse(POM).getroot()
    deps = root.findall(".//m:dependencies/m:dependency", MAVEN_NS)
    return {d.findtext("m:artifactId", namespaces=MAVEN_NS): d.findtext("m:version", namespaces=MAVEN_NS)
            for d in deps}


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _settings_keys() -> set[tuple[str, str]]:
    """Every (section, key) the settings accept, keys as env vars spell them (aliases too)."""
    keys: set[tuple[str, str]] = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not hasattr(model, "model_fields"):
            keys.add((section, ""))  # a top-level list (meters): METERFLOW__METERS as JSON
            continue
        for name, f in model.model_fields.items():
            keys.add((section, name))
            if f.alias:
                keys.add((section, f.alias))
    return keys


# --- compose ------------------------------------------------------------------------------------


def test_the_compose_file_has_every_service_a_cluster_needs(compose: dict) -> None:
    missing = REQUIRED_SERVICES - set(compose["services"])
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_depends_on_names_only_services_that_exist(compose: dict) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown service {dep!r}"


def test_published_ports_listen_on_loopback_only(compose: dict) -> None:
    for name, svc in compose["services"].items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):  # long syntax
                host_ip = port.get("host_ip", "")
                spec = f"{port.get('published')}:{port.get('target')}"
            else:
                parts = str(port).split(":")
                # "127.0.0.1:8081:8081" is the only shape allowed; "8081:8081" and "8081" bind
                # every interface.
                host_ip = parts[0] if len(parts) == 3 else ""
                spec = ":".join(parts[-2:])
            if host_ip != "127.0.0.1":
                assert spec in DOCUMENTED_PUBLIC_PORTS, (
                    f"{name} publishes {port!r} on every interface; bind it to 127.0.0.1 "
                    "or document it in DOCUMENTED_PUBLIC_PORTS"
                )


def test_every_meterflow_env_var_is_a_key_of_the_settings(compose: dict) -> None:
    accepted = _settings_keys()
    seen = 0
    anchors = [compose.get("x-meterflow-env") or {}]
    for env in [_env(s) for s in compose["services"].values()] + anchors:
        for var in env:
            if not var.startswith("METERFLOW__"):
                continue
            seen += 1
            parts = var.removeprefix("METERFLOW__").lower().split("__")
            section, key = parts[0], (parts[1] if len(parts) > 1 else "")
            assert (section, key) in accepted, (
                f"{var} is not a setting of schemas/config.py (known: METERFLOW__SECTION__KEY with "
                f"{sorted(f'{s}.{k}' for s, k in accepted if s == section) or 'no such section'})"
            )
    assert seen, "no METERFLOW__ variables at all: the services would run on the example's localhost"


def test_the_meterflow_services_reach_kafka_and_postgres_by_service_name(compose: dict) -> None:
    for name in ("jobmanager", "taskmanager", "job-submitter", "ledger"):
        env = _env(compose["services"][name])
        assert env.get("METERFLOW__KAFKA__BOOTSTRAP_SERVERS", "").split(":")[0] == "kafka", name
        assert env.get("METERFLOW__POSTGRES__HOST") == "postgres", name
        # the settings parse with these values (ints, durations, names)
        overrides = {k: v for k, v in env.items() if k.startswith("METERFLOW__")}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in overrides.items():
                mp.setenv(k, v.replace("${METERFLOW_APP_PASSWORD:?set METERFLOW_APP_PASSWORD}", "x"))
            from schemas.config import load_settings

            s = load_settings(ROOT / "config" / "meterflow.example.toml")
            assert s.postgres.host == "postgres"


def test_the_postgres_password_comes_from_the_environment_never_a_literal(compose: dict) -> None:
    for name, svc in compose["services"].items():
        for var, value in _env(svc).items():
            if "PASSWORD" in var:
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:?\?[^}]*)?\}", value), (
                    f"{name}: {var} must be interpolated from the environment, got {value!r}"
                )


def test_the_job_submitter_runs_flink_run_on_the_metering_job_with_its_python_files(
    compose: dict,
) -> None:
    cmd = compose["services"]["job-submitter"]["command"]
    text = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    assert "flink run" in text
    assert "-py /opt/meterflow/jobs/flink/metering.py" in text
    m = re.search(r"-pyfs (\S+)", text)
    assert m, "no -pyfs: the TaskManagers would not get meterflow's packages"
    for path in m.group(1).split(","):
        local = ROOT / path.removeprefix("/opt/meterflow/")
        assert local.is_dir() and (local / "__init__.py").exists(), f"-pyfs entry {path} is not a package"
    assert {"jobs", "operators", "pricing", "schemas", "sinks"} <= {
        Path(p).name for p in m.group(1).split(",")
    }
    assert (ROOT / "jobs" / "flink" / "metering.py").exists()


def test_the_ledger_service_runs_the_ledger_writer(compose: dict) -> None:
    cmd = compose["services"]["ledger"]["command"]
    text = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    assert "meterflow run ledger" in text


def test_kafka_runs_in_kraft_mode_and_allows_the_sinks_transaction_timeout(compose: dict) -> None:
    env = _env(compose["services"]["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    job_timeout = int(re.search(r"transaction\.timeout\.ms' = '(\d+)'",
                                (ROOT / "jobs" / "flink" / "metering.py").read_text()).group(1))
    assert int(env["KAFKA_TRANSACTION_MAX_TIMEOUT_MS"]) >= job_timeout


def test_checkpoints_are_on_a_volume_shared_by_the_jobmanager_and_taskmanagers(compose: dict) -> None:
    def mounts(name: str) -> set[str]:
        return {str(v).split(":")[1] for v in compose["services"][name].get("volumes") or []}

    props = compose["services"]["jobmanager"]["environment"]["FLINK_PROPERTIES"]
    m = re.search(r"execution\.checkpointing\.dir:\s*file://(\S+)", props)
    assert m, "execution.checkpointing.dir missing from FLINK_PROPERTIES"
    for name in ("jobmanager", "taskmanager"):
        assert any(m.group(1).startswith(mp) for mp in mounts(name)), f"{name} lacks {m.group(1)}"


# --- Dockerfile ---------------------------------------------------------------------------------


def test_every_copy_source_exists_in_the_repository(dockerfile: str) -> None:
    copies = [args for ins, args in _instructions(dockerfile) if ins in ("COPY", "ADD")]
    assert copies
    checked = 0
    for args in copies:
        words = [w for w in args.split() if not w.startswith("--")]
        if any(w.startswith("--from") for w in args.split()):
            continue  # from another build stage
        for src in words[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist (context = repo root)"
            checked += 1
    assert checked >= 5


def test_compose_builds_the_dockerfile_from_the_repository_root(compose: dict) -> None:
    build = compose["services"]["jobmanager"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE.resolve()


def _flink_pin() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return next(d for d in project["dependencies"] if d.startswith("apache-flink==")).split("==")[1]


def test_the_image_versions_match_the_project_pins(dockerfile: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    flink = _flink_pin()
    base = re.search(r"ARG FLINK_IMAGE=flink:(\S+)", dockerfile).group(1)
    # the exact release (a floating 2.2 tag would move under the pinned client and flink-python)
    assert base.split("-")[0] == flink, (base, flink)
    py = re.search(r"ARG PYTHON_VERSION=(\d+\.\d+)\.\d+", dockerfile).group(1)
    assert f"<{py.split('.')[0]}.{int(py.split('.')[1]) + 1}" in project["requires-python"]
    assert f">={py}" in project["requires-python"]


def test_the_image_puts_flink_python_in_the_clusters_lib(dockerfile: str) -> None:
    """Only on pipeline.jars, flink-python crash-loops every job after the first on a TaskManager
    (pemja's loadedLibraryNames); it must be in /opt/flink/lib."""
    runs = " ".join(args for ins, args in _instructions(dockerfile) if ins == "RUN")
    assert re.search(r"\bcp /opt/flink/opt/flink-python-\*\.jar /opt/flink/lib/", runs), (
        "the image does not copy flink-python into /opt/flink/lib")


def test_the_prometheus_reporter_is_the_pinned_flink_release_and_enabled(
    compose: dict, dockerfile: str,
) -> None:
    root = ET.parse(CLUSTER_POM).getroot()
    deps = {d.findtext("m:artifactId", namespaces=MAVEN_NS): d.findtext("m:version", namespaces=MAVEN_NS)
            for d in root.findall(".//m:dependencies/m:dependency", MAVEN_NS)}
    assert deps.get("flink-metrics-prometheus") == _flink_pin()
    assert "scripts/maven/flink-cluster-jars.pom.xml" in dockerfile
    assert re.search(r"COPY --from=jars \S*flink-metrics-prometheus-\S+ /opt/flink/plugins/metrics-prometheus/",
                     dockerfile)
    props = _flink_properties(compose["services"]["jobmanager"])
    assert props["metrics.reporter.prom.factory.class"] == \
        "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def _flink_properties(service: dict) -> dict[str, str]:
    text = (service.get("environment") or {}).get("FLINK_PROPERTIES") or ""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _submitter_command(compose: dict) -> str:
    cmd = compose["services"]["job-submitter"]["command"]
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_nothing_passes_the_rest_port_the_cluster_configuration_already_has(compose: dict) -> None:
    assert "rest.port" not in _submitter_command(compose)
    assert not re.search(r"-D\s*rest\.port", OPERATIONS.read_text()), "OPERATIONS.md passes -Drest.port"


def test_the_submitters_client_reads_the_clusters_configuration(compose: dict) -> None:
    """The job keeps what its client's configuration holds (REST address, parallelism, state backend,
    checkpoints); the client must therefore have the cluster's."""
    cluster = _flink_properties(compose["services"]["jobmanager"])
    assert _flink_properties(compose["services"]["job-submitter"]) == cluster
    assert _flink_properties(compose["services"]["taskmanager"]) == cluster


def test_the_clusters_rocksdb_backend_is_not_overridden_by_the_job(compose: dict, tmp_path: Path) -> None:
    from jobs.flink import env as flinkenv
    from schemas.config import load_settings

    props = _flink_properties(compose["services"]["jobmanager"])
    assert props["state.backend.type"] == "rocksdb"
    for name in flinkenv.JAR_NAMES:
        (tmp_path / f"{name}-1.0.jar").write_bytes(b"")
    s = load_settings(ROOT / "config" / "meterflow.example.toml")
    s = s.model_copy(update={"flink": s.flink.model_copy(update={"jars_dir": str(tmp_path)})})
    conf = flinkenv.job_configuration(s, job_name="meterflow-metering", context=props)
    overridden = {k for k in conf if k in props}
    assert not overridden, f"the job would override the cluster's {sorted(overridden)}"


def test_the_connector_jars_come_from_the_projects_pom(dockerfile: str) -> None:
    from jobs.flink.env import JAR_NAMES

    assert "scripts/maven/flink-jars.pom.xml" in dockerfile
    artifacts = _pom_artifacts()
    assert set(JAR_NAMES) <= set(artifacts), (
        f"the jobs need {sorted(JAR_NAMES)}, the pom fetches {sorted(artifacts)}"
    )
    # where the image puts them is where FlinkSettings.jars_dir looks by default
    default_dir = Path(Settings().flink.jars_dir)
    assert default_dir == ROOT / ".local" / "jars"
    assert "/opt/meterflow/.local/jars/" in dockerfile


def test_jar_file_names_in_the_docker_files_and_docs_match_the_pom() -> None:
    expected = {f"{a}-{v}.jar" for a, v in _pom_artifacts().items()}
    texts = [COMPOSE.read_text(), DOCKERFILE.read_text()]
    if OPERATIONS.exists():
        texts.append(OPERATIONS.read_text())
    names = set()
    for t in texts:
        names |= set(re.findall(r"\b((?:flink-[a-z-]+|postgresql)-\d[\w.-]*?\.jar)\b", t))
    unknown = {n for n in names if n not in expected and "prometheus" not in n}
    assert not unknown, f"jar names not fetched by {POM.name}: {sorted(unknown)} (it has {sorted(expected)})"


def test_the_build_context_excludes_local_state() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for entry in (".venv", ".local", ".git"):
        assert entry in ignore


def test_no_meterflow_service_connects_as_a_superuser(compose: dict) -> None:
    """The app services run as meterflow_app; only `postgres` itself and the one-shot `migrate`
    (which creates the roles, then migrates as meterflow_owner) know the superuser's password."""
    pg = _env(compose["services"]["postgres"])
    superuser_pw = pg["POSTGRES_PASSWORD"]
    assert "trust" not in pg.get("POSTGRES_INITDB_ARGS", "") and "scram-sha-256" in pg["POSTGRES_INITDB_ARGS"]
    assert "POSTGRES_HOST_AUTH_METHOD" not in pg
    for name, svc in compose["services"].items():
        env = _env(svc)
        if "METERFLOW__POSTGRES__HOST" not in env:
            continue
        assert env.get("METERFLOW__POSTGRES__USER") == "meterflow_app", name
        assert env.get("METERFLOW__POSTGRES__PASSWORD") != superuser_pw, name
        if name != "migrate":
            assert superuser_pw not in env.values(), f"{name} knows the superuser's password"
    migrate = _env(compose["services"]["migrate"])
    assert migrate["PGUSER"] == "postgres" and migrate["PGPASSWORD"] == superuser_pw
    assert "METERFLOW__POSTGRES__MIGRATION_PASSWORD" in migrate
