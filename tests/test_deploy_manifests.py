"""The container and Kubernetes files (Dockerfile, deploy/compose.yaml, deploy/k8s) against the
code: they render (`kubectl kustomize` where installed; else every resource parses and has the
fields Kubernetes requires), every process they start exists (`start_service.py --role` values,
Prefect CLI commands, `python -m` modules of ours), every setting they pass is a Settings field
or a Prefect setting, the Prefect server's migration step runs before replicas that neither
migrate nor register block types on start (compose: a one-shot service they wait for;
Kubernetes: every Prefect pod's init container), and the image installs exactly the pinned
requirements."""

import ast
import itertools
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import PROJECT_DIR, Settings
from tests.prefect_stack import MIGRATE

DEPLOY = PROJECT_DIR / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = PROJECT_DIR / "Dockerfile"
OWN_ENV = re.compile(r"^(PYTHON|PIP_)")
"""Environment of Python and pip themselves (Dockerfile), not the service's settings."""
MIGRATE_COMMAND = ["python", *MIGRATE[1:]]
"""The Prefect database's one-shot migration step, as tests/prefect_stack.py runs it."""


def k8s_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        path = K8S / name
        assert path.is_file(), f"kustomization resource {name} missing"
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] == kind]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for o in k8s_objects():
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """A pod's init containers, then its containers."""
    return [*pod.get("initContainers", []), *pod["containers"]]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@cache
def prefect_settings() -> frozenset[str]:
    """Every environment variable Prefect (and prefect-redis, which the server image installs)
    reads as a setting."""
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_settings_fields
    from prefect_redis.client import RedisMessagingSettings

    names = set(_get_settings_fields(PrefectSettings)) | set(
        _get_settings_fields(RedisMessagingSettings)
    )
    return frozenset(n for n in names if n.startswith("PREFECT_"))


def check_setting(name: str, where: str) -> None:
    assert name in Settings.model_fields or name in prefect_settings(), (
        f"{where}: {name} is neither a Settings field (config.py) nor a Prefect setting"
    )


@cache
def roles() -> frozenset[str]:
    """The `--role` choices of start_service.py's argument parser, read from its source (the
    `add_argument("--role", choices=...)` call; the choices evaluated in the module's namespace),
    so nothing is started."""
    import importlib

    source = (PROJECT_DIR / "start_service.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "--role"
        ):
            (choices,) = [k.value for k in node.keywords if k.arg == "choices"]
            module = importlib.import_module("start_service")
            code = compile(ast.Expression(choices), "start_service.py", "eval")
            return frozenset(str(c) for c in eval(code, vars(module)))  # noqa: S307
    raise AssertionError("start_service.py parses no --role option")


@cache
def prefect_command_exists(*args: str) -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode == 0


@cache
def module_runs(module: str) -> bool:
    """Whether `python -m <module>` of this repository parses its arguments (`--help` exits 0)."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode == 0


def check_command(command: list[str], where: str) -> None:
    """`python start_service.py [--role R]`, `python -m <our module>` or `prefect <subcommand>
    [options]`."""
    if command[:2] == ["python", "start_service.py"]:
        rest = command[2:]
        if rest:
            assert rest[0] == "--role" and len(rest) == 2, f"{where}: {command}"
            assert rest[1] in roles(), f"{where}: start_service.py has no role {rest[1]!r}"
        return
    if command[:2] == ["python", "-m"]:
        assert len(command) == 3, f"{where}: {command}"
        path = PROJECT_DIR.joinpath(*command[2].split(".")).with_suffix(".py")
        assert path.is_file(), f"{where}: no module {command[2]} in the repository"
        assert module_runs(command[2]), f"{where}: python -m {command[2]} --help failed"
        return
    assert command[0] == "prefect", f"{where}: unknown command {command}"
    words = list(itertools.takewhile(lambda w: not w.startswith("-"), command[1:]))
    assert prefect_command_exists(*words), f"{where}: no Prefect command {words}"
    if words == ["server", "start"]:
        help_text = subprocess.run(
            [sys.executable, "-m", "prefect", "server", "start", "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        for flag in (w for w in command if w.startswith("--")):
            assert flag in help_text, f"{where}: prefect server start has no {flag}"


# --- Kubernetes --------------------------------------------------------------------------------


def test_the_kustomize_base_renders() -> None:
    objects = k8s_objects()
    for o in objects:
        assert o.get("apiVersion") and o.get("kind"), o
        assert o["metadata"].get("name"), o
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= kinds
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    if shutil.which("kubectl"):
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
        )
        assert rendered.returncode == 0, rendered.stderr
        assert len(list(yaml.safe_load_all(rendered.stdout))) == len(objects)


def test_deployments_select_their_pods_and_run_existing_commands() -> None:
    for o in of_kind("Deployment"):
        name, spec = o["metadata"]["name"], o["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in all_containers(pod):
            assert container["image"] == "wos", name
            check_command(container["command"], f"Deployment {name}")


def test_the_service_roles_have_health_probes() -> None:
    by_role = {}
    for o in of_kind("Deployment"):
        (container,) = o["spec"]["template"]["spec"]["containers"]
        if container["command"][:2] == ["python", "start_service.py"]:
            by_role[container["command"][-1]] = container
            ports = {p["name"] for p in container["ports"]}
            live, ready = container["livenessProbe"], container["readinessProbe"]
            assert live["httpGet"]["path"] == "/health/live"
            assert ready["httpGet"]["path"] == "/health/ready"
            assert {live["httpGet"]["port"], ready["httpGet"]["port"]} <= ports
    assert set(by_role) == {"api", "worker"}


def test_every_reference_resolves() -> None:
    objects = k8s_objects()
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objects
        if o["kind"] == "Deployment"
    }

    def selects(selector: dict[str, str]) -> list[str]:
        return [name for name, labels in pods.items() if selector.items() <= labels.items()]

    for o in objects:
        name = o["metadata"]["name"]
        if o["kind"] == "Service":
            assert selects(o["spec"]["selector"]), f"Service {name} selects no Deployment"
        if o["kind"] == "PodDisruptionBudget":
            assert selects(o["spec"]["selector"]["matchLabels"]), f"PDB {name}"
        if o["kind"] == "HorizontalPodAutoscaler":
            target = o["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in names
    hpa_targets = {o["spec"]["scaleTargetRef"]["name"] for o in of_kind("HorizontalPodAutoscaler")}
    assert hpa_targets == {"wos-worker"}
    for pod_name, pod in pod_specs():
        for container in all_containers(pod):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                kind = "ConfigMap" if "configMapRef" in source else "Secret"
                assert (kind, ref["name"]) in names, f"{pod_name}: {kind} {ref['name']}"


def test_k8s_settings_exist_in_the_code() -> None:
    for o in k8s_objects():
        if o["kind"] in ("ConfigMap", "Secret"):
            data = o.get("data") or o.get("stringData") or {}
            for key in data:
                check_setting(key, f"{o['kind']} {o['metadata']['name']}")
    for pod_name, pod in pod_specs():
        for container in all_containers(pod):
            for env in container.get("env", []):
                check_setting(env["name"], pod_name)


def prefect_server_settings(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The Prefect server settings a process with `env` runs with, as Prefect's own settings model
    reads them (values compose interpolates, `${...}`, left out)."""
    from prefect.settings import Settings as PrefectSettings

    for key, value in env.items():
        if key.startswith("PREFECT_") and "${" not in str(value):
            monkeypatch.setenv(key, str(value))
    return PrefectSettings().server


def test_k8s_migrates_in_every_prefect_pod_before_its_prefect_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every Deployment that runs a Prefect server process (the API replicas, the services) first
    runs our migration step (Prefect's migrations, then its block types) as an init container:
    the same image, envFrom and volume mounts as the main container, an ordinary init container
    (not a `restartPolicy: Always` sidecar, which would run beside the main container), so the
    Prefect process starts only once it has exited 0. Its copies in several pods take turns on
    an advisory lock (tests/test_prefect_migrate.py). The main containers get prefect-config,
    where Prefect reads migrating and registering block types on start as off; nothing else runs
    the step (no Job)."""
    pods = dict(pod_specs())
    prefect_pods = {
        name
        for name, pod in pods.items()
        if any(c["command"][:2] == ["prefect", "server"] for c in pod["containers"])
    }
    assert prefect_pods == {"prefect-server", "prefect-services"}
    for name in prefect_pods:
        pod = pods[name]
        (init,) = pod["initContainers"]
        (main,) = pod["containers"]
        assert init["command"] == MIGRATE_COMMAND, name
        assert "restartPolicy" not in init, name
        assert (init["image"], init["envFrom"]) == (main["image"], main["envFrom"]), name
        assert init.get("volumeMounts") == main.get("volumeMounts"), name
        sources = [s.get("configMapRef", {}).get("name") for s in main["envFrom"]]
        assert "prefect-config" in sources, name
    runs_step = {
        name
        for name, pod in pods.items()
        for container in pod["containers"]
        if container["command"] == MIGRATE_COMMAND
    }
    assert not runs_step, f"{runs_step} run the migration step beside other processes"
    assert not of_kind("Job")
    (config,) = [o for o in of_kind("ConfigMap") if o["metadata"]["name"] == "prefect-config"]
    server = prefect_server_settings(config["data"], monkeypatch)
    assert server.register_blocks_on_start is False
    assert server.database.migrate_on_start is False


# --- Compose -----------------------------------------------------------------------------------


def test_compose_starts_every_part_of_the_topology() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "prefect-server", "prefect-services", "api", "worker"} <= set(
        services
    )
    assert services["prefect-server"]["deploy"]["replicas"] == 2
    assert "--no-services" in services["prefect-server"]["command"]
    assert services["prefect-services"]["command"][-3:] == ["server", "services", "start"]
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["api"]["command"][-2:] == ["--role", "api"]
    assert services["worker"]["command"][-2:] == ["--role", "worker"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://"), name
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    broker = services["prefect-server"]["environment"]["PREFECT_MESSAGING_BROKER"]
    assert broker == "prefect_redis.messaging"


def test_compose_migrates_once_before_replicas_that_neither_migrate_nor_register_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """prefect-migrate runs our migration step once; the replicas and the services process start
    after it has succeeded, with the same Prefect environment, in which Prefect reads migrating
    and registering block types on start as off."""
    services = compose()["services"]
    migrate = services["prefect-migrate"]
    assert migrate["command"] == MIGRATE_COMMAND
    assert migrate["restart"] == "no"
    for name in ("prefect-server", "prefect-services"):
        service = services[name]
        assert service["environment"] == migrate["environment"], name
        condition = service["depends_on"]["prefect-migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    server = prefect_server_settings(migrate["environment"], monkeypatch)
    assert server.register_blocks_on_start is False
    assert server.database.migrate_on_start is False


def test_compose_commands_and_settings_exist_in_the_code() -> None:
    for name, service in compose()["services"].items():
        if service.get("image") != "wos:latest":
            continue  # PostgreSQL, Redis, Prometheus, Grafana: their own images' settings
        check_command(service["command"], f"compose service {name}")
        for key in service.get("environment", {}):
            check_setting(key, f"compose service {name}")


def test_compose_mounts_files_of_the_repository() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
    dashboards = list((DEPLOY / "grafana").glob("*.json"))
    assert dashboards, "no Grafana dashboard to provision"
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {c["job_name"] for c in prometheus["scrape_configs"]}
    assert jobs == {"wos-api", "wos-worker"}


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def pins(path: Path) -> dict[str, str]:
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)==([0-9][^\s;]*)", line)
        assert match, f"{path.name}: {line!r} is not pinned (name==version)"
        found[match.group(1).lower()] = match.group(2)
    return found


def test_the_image_installs_exactly_the_pinned_requirements() -> None:
    steps = dockerfile_instructions()
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    installed = re.findall(r"-r\s+(\S+)", runs)
    assert installed == ["requirements.txt", "requirements-prefect-server.txt"]
    copies = [rest.split() for word, rest in steps if word == "COPY"]
    assert ["requirements.txt", "deploy/requirements-prefect-server.txt", "./"] in copies
    service = pins(PROJECT_DIR / "requirements.txt")
    server = pins(DEPLOY / "requirements-prefect-server.txt")
    assert service and server and not set(service) & set(server)
    from importlib.metadata import version

    for name, pinned in server.items():  # the pins the tests here ran with
        assert version(name) == pinned, name


def test_the_image_is_slim_non_root_and_probed() -> None:
    steps = dockerfile_instructions()
    (base,) = [rest for word, rest in steps if word == "FROM"]
    pyproject = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    python = pyproject["tool"]["mypy"]["python_version"]
    assert re.fullmatch(rf"python:{re.escape(python)}-slim(-\w+)?", base), base
    (user,) = [rest for word, rest in steps if word == "USER"]
    assert user not in ("0", "root")
    (health,) = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert "/health/live" in health
    for word, rest in steps:
        if word == "ENV":
            for name in re.findall(r"(\w+)=", rest):
                if not OWN_ENV.match(name):
                    check_setting(name, "Dockerfile ENV")
    (cmd,) = [rest for word, rest in steps if word == "CMD"]
    check_command(yaml.safe_load(cmd), "Dockerfile CMD")
    ignored = (PROJECT_DIR / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env"} <= set(ignored)


def test_an_unknown_role_is_refused() -> None:
    """The choices read above are the parser's: an unknown role is a usage error (exit 2)."""
    assert "bogus" not in roles()  # the parser exists: the run below cannot start the service
    result = subprocess.run(
        [sys.executable, "start_service.py", "--role", "bogus"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--role" in result.stderr
