"""deploy/ describes real deployments: the compose file, the Kubernetes
manifests, the systemd units and their env files name settings the commands
really read and commands (and flags) the package really installs, wire the
topology they claim (replicas on one database, workers reaching job-service,
Secrets that exist), and their settings pass the servers' own parsers."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib.util
import io
import os
import re
import shlex
import tomllib
from concurrent import futures
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from videojobs.common.config import DEFAULT_ADDRESS, DEFAULT_WORKER_LISTEN
from videojobs.common.security import check_exposure, server_tls
from videojobs.jobservice import settings as server_settings
from videojobs.storage.s3 import S3Connection
from videojobs.worker import settings as worker_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_ENV = DEPLOY / "compose.env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
HEALTHCHECK = "videojobs-healthcheck"

VARIABLE = re.compile(r"(?<![A-Za-z0-9_])VIDEOJOBS_[A-Z0-9_]+")
# Compose interpolation: $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME:?error}.
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


# --- what the package really has ---------------------------------------------


def _help(parse) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        parse(["--help"])
    assert exited.value.code == 0
    return out.getvalue()


@functools.cache
def server_help() -> str:
    return _help(server_settings.parse_settings)


@functools.cache
def worker_help() -> str:
    return _help(worker_settings.parse_settings)


@functools.cache
def healthcheck_module():
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def healthcheck_help() -> str:
    return _help(healthcheck_module().main)


@functools.cache
def real_settings() -> frozenset[str]:
    """Every VIDEOJOBS_* variable job-service, the workers and the CLI read."""
    from videojobs import client
    from videojobs.cli import args as cli_args

    names = set(VARIABLE.findall(server_help())) | set(VARIABLE.findall(worker_help()))
    names |= {
        value
        for name, value in vars(cli_args).items()
        if name.endswith("_ENV_VAR") and isinstance(value, str)
    }
    names.add(client.TOKEN_ENV_VAR)
    return frozenset(names)


@functools.cache
def project_scripts() -> frozenset[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return frozenset(pyproject["project"]["scripts"])


def server_subcommands() -> set[str]:
    """The subcommands `videojobs-server` dispatches on (`arguments[:1] == [NAME]`
    in its main module), read from the source: importing it loads the whole
    server, which nothing else here needs."""
    import videojobs.jobservice

    source = (Path(videojobs.jobservice.__file__).parent / "main.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    dispatched = {
        element.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        for comparator in node.comparators
        if isinstance(comparator, ast.List)
        for element in comparator.elts
        if isinstance(element, ast.Name)
    }
    return {constants[name] for name in dispatched if name in constants}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0]


# --- reading the deploy files -------------------------------------------------


def deploy_text_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def yaml_documents(path: Path) -> list:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (systemd EnvironmentFile and compose --env-file syntax)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}:{number}: {line!r}"
        assert key not in values, f"{path.name}:{number}: {key} set twice"
        values[key] = value
    return values


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit: section -> [(key, value)], repeated keys kept in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{number}: {line!r}"
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict, section: str, key: str) -> list[str]:
    return [value for k, value in unit.get(section, []) if k == key]


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation over a loaded document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op in ("-", ":-"):
            return arg
        raise AssertionError(f"compose needs ${{{name}}}, which compose.env.example lacks")

    return INTERPOLATION.sub(substitute, value)


@functools.cache
def compose_raw() -> dict:
    (document,) = yaml_documents(COMPOSE_FILE)
    return document


def compose() -> dict:
    return interpolate(compose_raw(), read_env_file(COMPOSE_ENV))


def compose_environment(service: dict) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def compose_services_running(program: str, subcommand: str | None = None) -> dict[str, dict]:
    found = {}
    for name, service in compose()["services"].items():
        command = service.get("command") or []
        if isinstance(command, str):
            command = shlex.split(command)
        if command[:1] != [program]:
            continue
        rest = [a for a in command[1:] if not a.startswith("-")]
        if (rest[:1] or [None])[0] == subcommand:
            found[name] = service
    return found


@functools.cache
def kubernetes_objects() -> tuple[dict, ...]:
    objects = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objects.extend(yaml_documents(path))
    return tuple(objects)


def k8s(kind: str, name: str | None = None) -> list[dict]:
    return [
        o
        for o in kubernetes_objects()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def pod_specs() -> list[tuple[str, dict]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in kubernetes_objects()
        if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")
    ]


def container_argv(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def secret_keys(name: str) -> set[str]:
    (secret,) = k8s("Secret", name)
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def configmap_data(name: str) -> dict[str, str]:
    (config,) = k8s("ConfigMap", name)
    return {k: str(v) for k, v in config["data"].items()}


def container_environment(container: dict) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps, Secrets and env."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment.update(configmap_data(source["configMapRef"]["name"]))
        else:
            (secret,) = k8s("Secret", source["secretRef"]["name"])
            environment.update({k: str(v) for k, v in secret["stringData"].items()})
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
    return environment


def deployment_container(name: str) -> dict:
    (deployment,) = k8s("Deployment", name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --- every argv the deploy files run -------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_exec_form(keyword: str) -> list[str]:
    (value,) = [rest for kw, rest in dockerfile_instructions() if kw == keyword]
    argv = yaml.safe_load(value)
    assert isinstance(argv, list), f"{keyword} must use the exec (JSON) form"
    return argv


def systemd_exec_starts() -> list[tuple[str, list[str]]]:
    found = []
    for path in sorted(SYSTEMD.glob("*.service")):
        for value in unit_values(read_unit(path), "Service", "ExecStart"):
            found.append((path.name, shlex.split(value.lstrip("-@:+!"))))
    return found


def all_argvs() -> list[tuple[str, list[str]]]:
    """(where, argv) for every command the deploy files run in the videojobs image
    or from the installed package."""
    argvs = [("Dockerfile CMD", dockerfile_exec_form("CMD"))]
    for name, service in compose()["services"].items():
        if not service.get("image", "").startswith("videojobs:"):
            continue
        argvs.append((f"compose {name}", service["command"]))
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"compose {name}: health check in exec form"
            argvs.append((f"compose {name} healthcheck", test[1:]))
    for owner, spec in pod_specs():
        for container in spec["containers"]:
            argvs.append((f"k8s {owner}", container_argv(container)))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in container.get(probe, {}):
                    argvs.append((f"k8s {owner} {probe}", container[probe]["exec"]["command"]))
    argvs.extend((f"systemd {unit}", argv) for unit, argv in systemd_exec_starts())
    return argvs


def flags_of(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


# --- tests: names ---------------------------------------------------------------


def test_the_settings_collector_finds_the_settings_of_every_command():
    names = real_settings()
    for expected in (
        "VIDEOJOBS_DATABASE_URL",  # server
        "VIDEOJOBS_DATA_DIR",  # server and worker, outside the settings dataclass
        "VIDEOJOBS_WORKER_CONCURRENCY",  # worker
        "VIDEOJOBS_TOKEN",  # read from the environment only
        "VIDEOJOBS_TLS_CLIENT_CERT",  # CLI and worker
    ):
        assert expected in names
    assert "VIDEOJOBS_NO_SUCH_SETTING" not in names


def test_every_videojobs_variable_in_deploy_is_a_real_setting():
    used: dict[str, set[str]] = {}
    for path in deploy_text_files():
        for name in VARIABLE.findall(path.read_text(encoding="utf-8")):
            used.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    assert "VIDEOJOBS_DATABASE_URL" in used
    unknown = {name: sorted(files) for name, files in used.items() if name not in real_settings()}
    assert not unknown, f"not settings of any videojobs command: {unknown}"


def test_every_command_is_an_installed_script_with_real_subcommands_and_flags():
    helps = {
        "videojobs-server": server_help,
        "videojobs-worker": worker_help,
        HEALTHCHECK: healthcheck_help,
    }
    assert {"migrate", "tokens"} <= server_subcommands()
    checked = set()
    for where, argv in all_argvs():
        if argv[:2] == ["/usr/bin/tini", "--"]:
            argv = argv[2:]
        program = PurePosixPath(argv[0]).name
        assert program in project_scripts() | {HEALTHCHECK}, f"{where}: {argv[0]} is no script"
        arguments = argv[1:]
        if program == "videojobs-server" and arguments and not arguments[0].startswith("-"):
            assert arguments[0] in server_subcommands(), f"{where}: {arguments[0]}"
            arguments = arguments[1:]
        for flag in flags_of(arguments):
            assert program in helps, f"{where}: flags of {program} are not checked here"
            assert re.search(rf"(?m)^\s+{re.escape(flag)}(?=[\s,=]|$)", helps[program]()), (
                f"{where}: {program} has no {flag}"
            )
        checked.add(program)
    assert checked >= {"videojobs-server", "videojobs-worker", HEALTHCHECK}


# --- tests: the image -----------------------------------------------------------


def test_dockerfile_runs_job_service_as_a_non_root_user_and_exposes_both_ports():
    assert dockerfile_exec_form("CMD") == ["videojobs-server"]
    assert dockerfile_exec_form("ENTRYPOINT") == ["/usr/bin/tini", "--"]
    instructions = dockerfile_instructions()
    (user,) = [rest for kw, rest in instructions if kw == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    exposed = {int(p) for kw, rest in instructions if kw == "EXPOSE" for p in rest.split()}
    assert {port_of(DEFAULT_ADDRESS), port_of(DEFAULT_WORKER_LISTEN)} <= exposed
    images = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    for image in images:
        resolved = args.get(image.strip("${}"), image)
        assert resolved.startswith("python:3.11-"), resolved  # requires-python = 3.11


def test_dockerfile_copies_what_the_wheel_is_built_from_and_the_ignore_file_keeps_it():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    copied = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.extend(rest.split()[:-1])
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert any(package == c or package.startswith(c.rstrip("/") + "/") for c in copied), (
            f"the wheel needs {package}, which the Dockerfile does not copy"
        )
    assert pyproject["project"]["readme"] in copied
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line for line in ignore if line and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list: exclude everything, then keep what is copied"
    kept = {line[1:] for line in ignore if line.startswith("!")}
    assert set(copied) <= kept, f"excluded from the build context: {set(copied) - kept}"


def test_the_image_installs_the_healthcheck_on_the_path():
    instructions = dockerfile_instructions()
    (target,) = [
        rest.split()[-1]
        for kw, rest in instructions
        if kw == "COPY" and rest.split()[0] == "deploy/healthcheck.py"
    ]
    assert PurePosixPath(target).name == HEALTHCHECK
    environment = " ".join(rest for kw, rest in instructions if kw == "ENV")
    (path,) = re.findall(r"PATH=(\S+)", environment)
    assert str(PurePosixPath(target).parent) in path.split(":")
    assert any(kw == "RUN" and f"chmod 0755 {target}" in rest for kw, rest in instructions)


# --- tests: compose -------------------------------------------------------------


def test_compose_runs_two_job_service_replicas_on_one_postgresql_database():
    services = compose()["services"]
    replicas = compose_services_running("videojobs-server")
    assert len(replicas) >= 2, sorted(replicas)
    urls = {compose_environment(s)["VIDEOJOBS_DATABASE_URL"] for s in replicas.values()}
    assert len(urls) == 1, "the replicas must share one database"
    url = make_url(urls.pop())
    assert url.drivername == "postgresql+asyncpg"
    postgres = services[url.host]
    assert postgres["image"].split(":")[0] == "postgres"
    assert postgres["image"].split(":")[1].startswith("15")
    postgres_env = compose_environment(postgres)
    assert url.username == postgres_env["POSTGRES_USER"]
    assert url.password == postgres_env["POSTGRES_PASSWORD"]
    assert url.database == postgres_env["POSTGRES_DB"]
    assert url.port == 5432


def test_compose_migrates_once_before_the_replicas_start():
    migrations = compose_services_running("videojobs-server", "migrate")
    assert len(migrations) == 1, sorted(migrations)
    ((migrate_name, migrate),) = migrations.items()
    assert migrate["command"] == ["videojobs-server", "migrate"]
    migrate_url = compose_environment(migrate)["VIDEOJOBS_DATABASE_URL"]
    for name, replica in compose_services_running("videojobs-server").items():
        assert compose_environment(replica)["VIDEOJOBS_DATABASE_URL"] == migrate_url
        condition = replica["depends_on"][migrate_name]["condition"]
        assert condition == "service_completed_successfully", name


def test_compose_storage_is_one_s3_bucket_that_the_setup_creates():
    services = compose()["services"]
    replicas = compose_services_running("videojobs-server")
    environments = [compose_environment(s) for s in replicas.values()]
    (storage_url,) = {e["VIDEOJOBS_STORAGE_URL"] for e in environments}
    bucket = urlparse(storage_url).netloc
    assert urlparse(storage_url).scheme == "s3" and bucket
    (endpoint,) = {e["AWS_ENDPOINT_URL"] for e in environments}
    connection = S3Connection.from_environment(environments[0])
    assert connection.endpoint_url == endpoint
    assert connection.access_key_id and connection.secret_access_key and connection.region
    store = services[urlparse(endpoint).hostname]
    assert store["image"].startswith("minio/minio:")
    creates_bucket = re.compile(rf"(?m)^\s*mc mb\b.*\slocal/{re.escape(bucket)}\s*$")
    creators = [
        name
        for name, service in services.items()
        if creates_bucket.search("\n".join(service.get("command") or []))
    ]
    assert len(creators) == 1, f"no service creates the bucket {bucket}"
    setup = compose_environment(services[creators[0]])
    assert setup["S3_ACCESS_KEY"] == connection.access_key_id
    assert setup["S3_SECRET_KEY"] == connection.secret_access_key
    for name, replica in replicas.items():
        condition = replica["depends_on"][creators[0]]["condition"]
        assert condition == "service_completed_successfully", name


def test_compose_workers_reach_the_job_service_replicas():
    services = compose()["services"]
    replicas = compose_services_running("videojobs-server")
    workers = compose_services_running("videojobs-worker")
    assert sum(s.get("deploy", {}).get("replicas", 1) for s in workers.values()) >= 2
    for name, worker in workers.items():
        address = compose_environment(worker)["VIDEOJOBS_ADDRESS"]
        host = host_of(address)
        for replica_name, replica in replicas.items():
            aliases = replica.get("networks", {}).get("default", {}).get("aliases", [])
            listen = compose_environment(replica)["VIDEOJOBS_LISTEN"]
            assert port_of(address) == port_of(listen)
            assert host == replica_name or host in aliases, (
                f"{name} dials {host}, which {replica_name} does not answer to"
            )
        assert "VIDEOJOBS_DATABASE_URL" not in compose_environment(worker)
        assert set(worker["depends_on"]) <= set(services)


def test_compose_health_checks_ask_the_port_each_server_listens_on():
    for replica in compose_services_running("videojobs-server").values():
        test = replica["healthcheck"]["test"]
        assert test[1] == HEALTHCHECK
        listen = compose_environment(replica)["VIDEOJOBS_LISTEN"]
        assert port_of(test[test.index("--address") + 1]) == port_of(listen)
    for worker in compose_services_running("videojobs-worker").values():
        test = worker["healthcheck"]["test"]
        listen = compose_environment(worker).get("VIDEOJOBS_WORKER_LISTEN", DEFAULT_WORKER_LISTEN)
        assert test[1] == HEALTHCHECK
        assert test[test.index("--address") + 1] == listen


def test_compose_publishes_an_insecure_job_service_on_loopback_only(tmp_path, monkeypatch):
    for name, replica in compose_services_running("videojobs-server").items():
        settings = parse_server_settings(compose_environment(replica), tmp_path, monkeypatch)
        warning = check_exposure(
            settings.listen,
            authenticated=bool(settings.auth_file),
            tls=bool(settings.tls_cert),
            insecure=settings.insecure,
            service="job-service",
        )
        if warning is None:
            continue
        for published in replica.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), f"{name} publishes {published}"


def test_compose_env_example_defines_exactly_what_compose_interpolates():
    raw = COMPOSE_FILE.read_text(encoding="utf-8")
    needed = {m["name"] for m in INTERPOLATION.finditer(raw) if m["name"] and not m["op"]}
    needed |= {m["name"] for m in INTERPOLATION.finditer(raw) if m["op"] in (":?", "?")}
    mentioned = {m["name"] for m in INTERPOLATION.finditer(raw) if m["name"]}
    defined = set(read_env_file(COMPOSE_ENV))
    assert needed <= defined
    assert defined <= mentioned, f"unused in compose: {defined - mentioned}"
    compose()  # every reference resolves


# --- tests: Kubernetes ----------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_example_secrets():
    (kustomization,) = yaml_documents(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == manifests - {"secret.example.yaml"}
    assert all(o.get("metadata", {}).get("namespace") is None for o in kubernetes_objects())


def test_job_service_deployment_has_replicas_and_health_probes_on_its_grpc_port():
    (deployment,) = k8s("Deployment", "videojobs-jobservice")
    assert deployment["spec"]["replicas"] >= 2
    container = deployment_container("videojobs-jobservice")
    assert container_argv(container) == ["videojobs-server"]
    (port,) = [p for p in container["ports"] if p["name"] == "grpc"]
    environment = container_environment(container)
    assert port["containerPort"] == port_of(environment["VIDEOJOBS_LISTEN"]) == 50051
    for probe in ("readinessProbe", "livenessProbe"):
        assert_grpc_health_probe(container, container[probe], port["containerPort"])
    (service,) = k8s("Service", "videojobs-jobservice")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == 50051
    assert service_port["targetPort"] in (port["name"], port["containerPort"])


def assert_grpc_health_probe(container: dict, probe: dict, port: int) -> None:
    """A probe of grpc.health.v1 on `port`: the kubelet's own, or the healthcheck
    (over TLS with the CA and name the server's certificate is checked against,
    when the container serves TLS)."""
    if "grpc" in probe:
        assert probe["grpc"]["port"] == port
        assert not container_environment(container).get("VIDEOJOBS_TLS_CERT"), (
            "the kubelet's gRPC probe cannot speak TLS"
        )
        return
    argv = probe["exec"]["command"]
    assert argv[0] == HEALTHCHECK
    options = dict(a.split("=", 1) for a in argv[1:])
    assert port_of(options["--address"]) == port
    if container_environment(container).get("VIDEOJOBS_TLS_CERT"):
        assert mounted_secret_key(container, options["--tls-ca"])
        assert options["--server-name"] in {s["metadata"]["name"] for s in k8s("Service")}


def mounted_secret_key(container: dict, path: str) -> tuple[str, str] | None:
    """(Secret, key) that the file `path` of `container` comes from, or None."""
    spec = next(
        spec
        for _, spec in pod_specs()
        if any(c["name"] == container["name"] for c in spec["containers"])
    )
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    file = PurePosixPath(path)
    for mount in container.get("volumeMounts", []):
        if PurePosixPath(mount["mountPath"]) != file.parent:
            continue
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            return None
        items = secret.get("items")
        keys = {i["path"]: i["key"] for i in items} if items else None
        key = keys.get(file.name) if keys is not None else file.name
        if key in secret_keys(secret["secretName"]):
            return secret["secretName"], key
    return None


def test_every_file_a_setting_names_is_mounted_from_a_secret():
    checked = 0
    for owner, spec in pod_specs():
        for container in spec["containers"]:
            environment = container_environment(container)
            for name in (
                "VIDEOJOBS_AUTH_FILE",
                "VIDEOJOBS_TLS_CERT",
                "VIDEOJOBS_TLS_KEY",
                "VIDEOJOBS_TLS_CA",
                "VIDEOJOBS_TOKEN_FILE",
            ):
                if name not in environment or owner == "videojobs-migrate":
                    continue
                assert mounted_secret_key(container, environment[name]), (
                    f"{owner}: {name}={environment[name]} is not a mounted Secret key"
                )
                checked += 1
    assert checked >= 5


def test_every_referenced_configmap_and_secret_is_defined():
    for owner, spec in pod_specs():
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert k8s("ConfigMap", source["configMapRef"]["name"]), owner
                else:
                    assert k8s("Secret", source["secretRef"]["name"]), owner
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                keys = secret_keys(volume["secret"]["secretName"])
                for item in volume["secret"].get("items", []):
                    assert item["key"] in keys, f"{owner}: {item['key']}"


def test_migration_job_runs_migrate_with_the_job_service_settings():
    (job,) = k8s("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container_argv(container) == ["videojobs-server", "migrate"]
    server = deployment_container("videojobs-jobservice")
    assert container["envFrom"] == server["envFrom"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_workers_dial_the_job_service_service_with_their_own_identity():
    (deployment,) = k8s("Deployment", "videojobs-worker")
    assert deployment["spec"]["replicas"] >= 1
    container = deployment_container("videojobs-worker")
    assert container_argv(container) == ["videojobs-worker"]
    environment = container_environment(container)
    (service,) = k8s("Service", "videojobs-jobservice")
    assert host_of(environment["VIDEOJOBS_ADDRESS"]) == service["metadata"]["name"]
    assert port_of(environment["VIDEOJOBS_ADDRESS"]) == service["spec"]["ports"][0]["port"]
    assert not {"VIDEOJOBS_DATABASE_URL", "AWS_SECRET_ACCESS_KEY"} & set(environment)
    # $(NAME) in an env value only expands a variable defined before it.
    defined: set[str] = set()
    for variable in container.get("env", []):
        for reference in re.findall(r"\$\((\w+)\)", variable.get("value", "")):
            assert reference in defined, f"{variable['name']} uses $({reference}) too early"
        defined.add(variable["name"])
    listen = environment.get("VIDEOJOBS_WORKER_LISTEN", DEFAULT_WORKER_LISTEN)
    for probe in ("readinessProbe", "livenessProbe"):
        assert_grpc_health_probe(container, container[probe], port_of(listen))
    grace = int(environment["VIDEOJOBS_WORKER_DRAIN_GRACE"])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_every_pod_runs_as_non_root_with_resources():
    specs = pod_specs()
    assert len(specs) >= 3
    for owner, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"]["runAsUser"] != 0, owner
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, owner
            assert context["capabilities"]["drop"] == ["ALL"], owner
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), owner
            assert "memory" in resources["limits"], owner


# --- tests: the settings pass the commands' own parsers -------------------------


def clean_environment(monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith(("VIDEOJOBS_", "AWS_")):
            monkeypatch.delenv(name)


def parse_server_settings(environment: dict[str, str], tmp_path: Path, monkeypatch, argv=()):
    clean_environment(monkeypatch)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VIDEOJOBS_DATA_DIR", str(tmp_path / "server"))
    return server_settings.parse_settings(list(argv))


def parse_worker_settings(environment: dict[str, str], tmp_path: Path, monkeypatch, argv=()):
    clean_environment(monkeypatch)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VIDEOJOBS_DATA_DIR", str(tmp_path / "worker"))
    if "VIDEOJOBS_TOKEN_FILE" in environment:
        token = tmp_path / "token"
        token.write_text("vj_example\n", encoding="utf-8")
        monkeypatch.setenv("VIDEOJOBS_TOKEN_FILE", str(token))
    return worker_settings.parse_settings(list(argv))


def assert_serves_job_service(settings) -> None:
    url = make_url(settings.database_url)
    assert url.drivername == "postgresql+asyncpg"
    assert settings.storage_url.startswith("s3://")
    from videojobs.storage import open_blob_store

    open_blob_store(settings.storage_url)  # a valid s3:// URL; nothing is contacted
    assert not is_loopback_address(settings.listen)


def is_loopback_address(address: str) -> bool:
    from videojobs.common.security import is_loopback

    return is_loopback(address)


def test_kubernetes_job_service_settings_parse_and_need_no_insecure_flag(tmp_path, monkeypatch):
    environment = container_environment(deployment_container("videojobs-jobservice"))
    settings = parse_server_settings(environment, tmp_path, monkeypatch)
    assert_serves_job_service(settings)
    assert settings.insecure is False
    assert settings.auth_file and settings.tls_cert
    assert server_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    warning = check_exposure(
        settings.listen, authenticated=True, tls=True, insecure=False, service="job-service"
    )
    assert warning is None
    assert S3Connection.from_environment(environment).secret_access_key


def test_kubernetes_worker_settings_parse(tmp_path, monkeypatch):
    container = deployment_container("videojobs-worker")
    environment = container_environment(container)
    environment["VIDEOJOBS_WORKER_ID"] = environment["VIDEOJOBS_WORKER_ID"].replace(
        "$(POD_NAME)", "videojobs-worker-5d9c7b-x2x7q"
    )
    settings = parse_worker_settings(environment, tmp_path, monkeypatch)
    config = configmap_data("videojobs-worker")
    assert settings.concurrency == int(config["VIDEOJOBS_WORKER_CONCURRENCY"])
    assert settings.child_memory_limit_mib == int(config["VIDEOJOBS_WORKER_CHILD_MEMORY_LIMIT_MIB"])
    assert settings.client_security.tls and settings.client_security.token
    assert settings.worker_id.startswith("workers:")
    assert (
        check_exposure(
            settings.listen, authenticated=False, tls=False, insecure=False, service="worker"
        )
        is None
    ), "the worker's own server must stay on loopback without an auth file and TLS"


def test_compose_settings_parse(tmp_path, monkeypatch):
    for replica in compose_services_running("videojobs-server").values():
        settings = parse_server_settings(compose_environment(replica), tmp_path, monkeypatch)
        assert_serves_job_service(settings)
        assert settings.insecure, "compose runs job-service without auth and TLS on purpose"
    for worker in compose_services_running("videojobs-worker").values():
        settings = parse_worker_settings(compose_environment(worker), tmp_path, monkeypatch)
        assert settings.child_memory_limit_mib == 2048
        assert is_loopback_address(settings.listen)


# --- tests: systemd ---------------------------------------------------------------


def test_systemd_units_start_installed_scripts_hardened_with_their_env_files():
    units = {p.name: read_unit(p) for p in SYSTEMD.glob("*.service")}
    assert set(units) == {"videojobs-server.service", "videojobs-worker@.service"}
    for name, unit in units.items():
        (exec_start,) = unit_values(unit, "Service", "ExecStart")
        program = PurePosixPath(shlex.split(exec_start)[0])
        assert program.is_absolute() and program.name in project_scripts(), name
        env_files = [f.lstrip("-") for f in unit_values(unit, "Service", "EnvironmentFile")]
        required = [f for f in unit_values(unit, "Service", "EnvironmentFile") if f[0] != "-"]
        assert required, f"{name}: no EnvironmentFile"
        for path in env_files:
            assert path.startswith("/etc/videojobs/") and path.endswith(".env"), path
        for path in required:
            example = SYSTEMD / (PurePosixPath(path).name + ".example")
            assert example.is_file(), f"{name}: {path} has no example"
        settings = dict(unit["Service"])
        assert settings["User"] not in ("root", "0")
        assert settings["Restart"] == "on-failure"
        assert settings["NoNewPrivileges"] == "yes"
        assert settings["ProtectSystem"] == "strict"
        assert settings["CapabilityBoundingSet"] == ""
        assert unit_values(unit, "Install", "WantedBy") == ["multi-user.target"]


def systemd_argv(unit: str, instance: str = "50052") -> list[str]:
    (exec_start,) = unit_values(read_unit(SYSTEMD / unit), "Service", "ExecStart")
    return shlex.split(exec_start.replace("%i", instance).replace("%H", "host-1.example"))


def test_systemd_data_directories_are_the_writable_paths():
    server = read_unit(SYSTEMD / "videojobs-server.service")
    data_dir = read_env_file(SYSTEMD / "server.env.example")["VIDEOJOBS_DATA_DIR"]
    assert unit_values(server, "Service", "ReadWritePaths") == [data_dir]
    assert unit_values(server, "Service", "StateDirectory") == [
        str(PurePosixPath(data_dir).relative_to("/var/lib"))
    ]
    worker = read_unit(SYSTEMD / "videojobs-worker@.service")
    argv = systemd_argv("videojobs-worker@.service", "%i")
    worker_data_dir = argv[argv.index("--data-dir") + 1]
    assert unit_values(worker, "Service", "ReadWritePaths") == [worker_data_dir]
    assert "%i" in worker_data_dir, "instances must not share a spool"
    assert "VIDEOJOBS_DATA_DIR" not in read_env_file(SYSTEMD / "worker.env.example")


def test_systemd_env_files_parse(tmp_path, monkeypatch):
    server = parse_server_settings(
        read_env_file(SYSTEMD / "server.env.example"), tmp_path, monkeypatch
    )
    assert_serves_job_service(server)
    assert server.auth_file and server.tls_cert and not server.insecure
    assert S3Connection.from_environment(read_env_file(SYSTEMD / "server.env.example")).region
    argv = systemd_argv("videojobs-worker@.service")
    data_dir = argv.index("--data-dir") + 1
    argv[data_dir] = str(tmp_path / "spool-root")
    worker = parse_worker_settings(
        read_env_file(SYSTEMD / "worker.env.example"), tmp_path, monkeypatch, argv[1:]
    )
    assert worker.listen == "127.0.0.1:50052"
    assert worker.worker_id == "host-1.example:50052"
    assert worker.client_security.tls and worker.client_security.token
    assert Path(worker.spool_dir).parent == tmp_path / "spool-root"


def test_env_examples_set_only_real_settings_and_aws_variables():
    aws = {f"AWS_{f.name.upper()}" for f in dataclasses.fields(S3Connection)}
    for path in [COMPOSE_ENV, *SYSTEMD.glob("*.env.example")]:
        for name in read_env_file(path):
            if name.startswith("AWS_"):
                assert name in aws | {"AWS_DEFAULT_REGION"}, f"{path.name}: {name}"
            elif path != COMPOSE_ENV:
                assert name in real_settings(), f"{path.name}: {name}"


# --- tests: the health check itself ---------------------------------------------


@contextlib.contextmanager
def running_health_server(credentials: grpc.ServerCredentials | None = None):
    """A real gRPC server on a free loopback port serving grpc.health.v1."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture
def health_server():
    with running_health_server() as running:
        yield running


def test_healthcheck_passes_only_while_the_server_is_serving(health_server, capsys):
    servicer, address = health_server
    check = healthcheck_module().main
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert check(["--address", address]) == 1
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert check(["--address", address]) == 0
    assert check(["--address", address, "--service", "videojobs.v1.Unknown"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_healthcheck_fails_without_a_server_or_with_a_missing_ca(tmp_path):
    check = healthcheck_module().main
    with socket_port() as port:
        pass  # the port is free again: nothing listens on it
    assert check(["--address", f"127.0.0.1:{port}", "--timeout", "2"]) == 1
    assert check(["--address", "127.0.0.1:1", "--tls-ca", str(tmp_path / "none.pem")]) == 2


@contextlib.contextmanager
def socket_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_healthcheck_probes_a_tls_server_by_the_name_its_certificate_carries(tmp_path):
    """What the Kubernetes probes do: dial 127.0.0.1 and check the certificate
    against the Service name, which is all the certificate names."""
    from support.certificates import CertificateAuthority

    authority = CertificateAuthority.create(tmp_path, "ca")
    pair = authority.server_certificate(hosts=("videojobs-jobservice",))
    credentials = grpc.ssl_server_credentials([(pair.key.read_bytes(), pair.cert.read_bytes())])
    check = healthcheck_module().main
    with running_health_server(credentials) as (servicer, address):
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        tls = ["--address", address, "--tls-ca", str(authority.cert), "--timeout", "5"]
        assert check([*tls, "--server-name", "videojobs-jobservice"]) == 0
        assert check(tls) == 1  # the certificate does not name 127.0.0.1
        # Plaintext, as the kubelet's built-in gRPC probe would connect.
        assert check(["--address", address, "--timeout", "2"]) == 1
