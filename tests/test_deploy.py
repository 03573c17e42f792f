"""Container and deployment files: the Dockerfile's invariants, .dockerignore, every
workspace-proxy config under deploy/ (including the one inside the Kubernetes ConfigMap), the
sidecar manifest's wiring and the compose example, run end to end as plain processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

import pytest
import yaml

from workspace_proxy.config import Config
from workspace_proxy.errors import ConfigError
from workspace_proxy.loading import load_config
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
SIDECAR = DEPLOY / "kubernetes" / "sidecar.yaml"
COMPOSE = DEPLOY / "compose.yaml"
CONFIG_PATH = "/etc/workspace-proxy/config.yaml"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make ", "clang", "python3-dev", "apt-get")
#: Long enough for token_signing_key; distinct per variable (no two teams share a Looker user).
ENV_VALUE = "{name}-0123456789abcdef0123456789abcdef"


# --- Dockerfile ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int
    """Index of the FROM this instruction belongs to; -1 before the first FROM (global ARGs)."""
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, None for shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # comments may sit inside continuations
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical, pending = pending + stripped, ""
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


DOCKER = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
FINAL_STAGE = max(i.stage for i in DOCKER)


def final(keyword: str) -> list[Instruction]:
    """The final stage's instructions with this keyword."""
    return [i for i in DOCKER if i.stage == FINAL_STAGE and i.keyword == keyword]


def stage_name(index: int) -> str | None:
    """The ``AS name`` of stage ``index``."""
    froms = [i for i in DOCKER if i.keyword == "FROM"]
    words = froms[index].args.split()
    return words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else None


def base_image(index: int) -> str:
    """The image of stage ``index`` with global ARG defaults substituted."""
    defaults = {}
    for instruction in DOCKER:
        if instruction.stage == -1 and instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            defaults[name] = default
    image = next(i for i in DOCKER if i.keyword == "FROM" and i.stage == index).args.split()[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m[1] or m[2]], image)


def config_defaults() -> Config:
    """The smallest valid config: every listener at its default."""
    raw = {
        "looker": {"base_url": "https://example.cloud.looker.com"},
        "token_signing_key": {"env": "K"},
        "teams": {
            "t": {
                "workspace": "dev",
                "looker_client_id": "id",
                "looker_client_secret": {"env": "K"},
                "callers": [{"client_id": "c", "client_secret": {"env": "K"}}],
            }
        },
    }
    return parse_config(raw, env={"K": ENV_VALUE.format(name="k")})


def healthcheck_code(argv: list[str]) -> str:
    """The Python source of a ``python -c CODE`` health check."""
    assert argv[:2] == ["python", "-c"], f"health check is not `python -c ...`: {argv}"
    assert len(argv) == 3, argv
    return argv[2]


def test_dockerfile_builds_a_wheel_then_installs_only_wheels() -> None:
    """A builder stage builds the project's wheel; the final stage installs wheels only, offline."""
    assert FINAL_STAGE >= 1, "the Dockerfile must be multi-stage"
    builder = stage_name(0)
    assert builder is not None, "the builder stage needs a name"
    builder_runs = " ".join(i.args for i in DOCKER if i.stage == 0 and i.keyword == "RUN")
    assert re.search(r"\bpip wheel\b.*(--wheel-dir|-w)\s+/wheels\s+\.", builder_runs)
    (install,) = [i.args for i in final("RUN") if "pip install" in i.args]
    assert "--no-index" in install
    assert f"from={builder}" in install or any(
        f"--from={builder}" in i.args for i in final("COPY")
    ), "the final stage must take its wheels from the builder"
    assert not final("COPY") or all(f"--from={builder}" in i.args for i in final("COPY")), (
        "the final stage copies nothing from the build context"
    )


def test_final_stage_is_slim_python_3_11_or_newer() -> None:
    """The runtime base is an official slim Python image of a supported version."""
    image = base_image(FINAL_STAGE)
    match = re.fullmatch(r"python:3\.(\d+)(?:\.\d+)?-slim(?:-\w+)?(?:@sha256:[0-9a-f]{64})?", image)
    assert match is not None, image
    assert int(match[1]) >= 11, image
    assert base_image(0) == image, "build the wheels with the Python they will run on"


def test_final_stage_has_no_build_tools() -> None:
    """The final stage installs no compiler and removes pip, setuptools and wheel after use."""
    text = " ".join(i.args for i in DOCKER if i.stage == FINAL_STAGE).lower()
    for tool in BUILD_TOOLS:
        assert tool not in text, f"final stage mentions {tool.strip()!r}"
    (install,) = [i.args for i in final("RUN") if "pip install" in i.args]
    uninstall = re.search(r"pip uninstall (?:--?[\w=-]+ )*([\w -]+)", install)
    assert uninstall is not None, "the packaging tools stay in the image"
    assert {"pip", "setuptools", "wheel"} <= set(uninstall[1].split())
    assert install.index("pip install") < uninstall.start()


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    """USER is numeric (Kubernetes runAsNonRoot can check it) and not root."""
    users = final("USER")
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit(), f"USER {users[-1].args} is not numeric"
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_entrypoint_and_cmd_are_exec_form_without_a_shell() -> None:
    """Signals reach the proxy directly: it is PID 1, no shell or wrapper in between."""
    (entrypoint,) = final("ENTRYPOINT")
    (cmd,) = final("CMD")
    assert entrypoint.exec_form() == ["workspace-proxy"]
    assert cmd.exec_form() == ["serve", "-c", CONFIG_PATH]
    assert all(i.args.strip() in ("SIGTERM", "TERM", "15") for i in final("STOPSIGNAL"))


def test_python_output_is_unbuffered() -> None:
    """PYTHONUNBUFFERED=1, so log lines leave the container as they are written."""
    env = " ".join(i.args for i in final("ENV"))
    assert re.search(r"(^|\s)PYTHONUNBUFFERED=1(\s|$)", env), env


def test_expose_matches_the_config_defaults() -> None:
    """EXPOSE lists exactly the default proxy and admin ports."""
    exposed = {int(p.split("/")[0]) for i in final("EXPOSE") for p in i.args.split()}
    defaults = config_defaults()
    assert exposed == {defaults.listen.port, defaults.admin.port}


def test_healthcheck_hits_admin_healthz_with_the_stdlib() -> None:
    """HEALTHCHECK runs `python -c` with urllib against the default admin port's /healthz."""
    (check,) = final("HEALTHCHECK")
    options, _, command = check.args.partition("CMD ")
    assert all(o.startswith("--") for o in options.split()), options
    argv = Instruction(check.stage, "CMD", command).exec_form()
    assert argv is not None, "HEALTHCHECK CMD must be exec form"
    code = healthcheck_code(argv)
    compile(code, "<healthcheck>", "exec")
    assert f"http://127.0.0.1:{config_defaults().admin.port}/healthz" in code
    assert "urllib.request" in code
    final_stage = " ".join(i.args for i in DOCKER if i.stage == FINAL_STAGE)
    assert "curl" not in final_stage
    assert "wget" not in final_stage


# --- .dockerignore -------------------------------------------------------------------------------


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        elif glob[i] == "[":
            end = glob.index("]", i)
            out, i = out + glob[i : end + 1], end + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative, posix) out of the build context.

    As in Docker: the last matching pattern wins, and a pattern matching a parent directory
    matches everything below it."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _pattern(line.lstrip("!").strip("/"))))
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, rule in rules:
        if any(rule.match(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_what_the_builder_copies_and_nothing_local() -> None:
    """Every file the builder COPYs is in the context; venvs, git and caches are not."""
    sources = []
    for copy in (i for i in DOCKER if i.keyword == "COPY" and "--from" not in i.args):
        sources += copy.args.split()[:-1]
    assert sources, "the builder copies the project"
    for source in sources:
        files = [p for p in (ROOT / source).rglob("*") if p.is_file()] or [ROOT / source]
        kept = [f for f in files if "__pycache__" not in f.parts]
        assert kept, source
        for file in kept:
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignored(relative), f"{relative} is COPYed but .dockerignore drops it"
    for local in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "deploy/compose.yaml"):
        assert dockerignored(local), local
    assert dockerignored("workspace_proxy/__pycache__/cli.cpython-311.pyc")


# --- configs under deploy/ -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeployConfig:
    label: str
    raw: dict[str, Any]
    file: Path | None
    """The file the config is, when it is a whole file (not embedded in another document)."""


def _is_proxy_config(doc: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(doc, dict) and "teams" in doc and "looker" in doc


def deploy_configs() -> list[DeployConfig]:
    """Every workspace-proxy config in deploy/: whole files and those inside ConfigMaps."""
    found = []
    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        name = path.relative_to(ROOT).as_posix()
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        for index, doc in enumerate(docs):
            if _is_proxy_config(doc):
                found.append(DeployConfig(name, doc, path if len(docs) == 1 else None))
            elif isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    embedded = yaml.safe_load(text) if key.endswith((".yaml", ".yml")) else None
                    if _is_proxy_config(embedded):
                        label = f"{name}#{index}:ConfigMap/{doc['metadata']['name']}/{key}"
                        found.append(DeployConfig(label, embedded, None))
    return found


DEPLOY_CONFIGS = deploy_configs()


def env_refs(node: object) -> set[str]:
    """Names of every ``{env: NAME}`` secret reference in a config document."""
    if isinstance(node, dict):
        if len(node) == 1 and isinstance(node.get("env"), str):
            return {node["env"]}
        return set().union(*(env_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node))
    return set()


def env_for(raw: dict[str, Any]) -> dict[str, str]:
    """A value for every variable the config references."""
    return {name: ENV_VALUE.format(name=name.lower()) for name in env_refs(raw)}


def test_deploy_configs_are_all_found() -> None:
    """The compose config, the Kubernetes config file and the ConfigMap's copy are all checked."""
    labels = [c.label for c in DEPLOY_CONFIGS]
    assert "deploy/compose-config.yaml" in labels
    assert "deploy/kubernetes/config.yaml" in labels
    assert any(label.startswith("deploy/kubernetes/sidecar.yaml#") for label in labels), labels


@pytest.mark.parametrize("config", DEPLOY_CONFIGS, ids=[c.label for c in DEPLOY_CONFIGS])
def test_deploy_config_is_valid(config: DeployConfig) -> None:
    """With the variables it references set, the config validates (from its file, if any)."""
    env = env_for(config.raw)
    parsed = parse_config(config.raw, env=env, source=config.label)
    assert parsed.teams
    if config.file is not None:
        assert load_config(config.file, env=env).teams.keys() == parsed.teams.keys()


# --- Kubernetes sidecar --------------------------------------------------------------------------


def _manifest() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(SIDECAR.read_text(encoding="utf-8")) if d is not None]


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _manifest() if d["kind"] == kind]
    return doc


@dataclass(frozen=True)
class Pod:
    spec: dict[str, Any]
    proxy: dict[str, Any]
    app: dict[str, Any]
    config: Config
    raw_config: dict[str, Any]


@pytest.fixture(name="pod")
def _pod() -> Pod:
    """The Deployment's pod, its proxy and BI containers, and the ConfigMap's parsed config."""
    spec = _one("Deployment")["spec"]["template"]["spec"]
    containers = spec["containers"] + spec.get("initContainers", [])
    (proxy,) = [c for c in containers if "workspace-proxy" in c["image"]]
    (app,) = [c for c in spec["containers"] if c is not proxy]
    (text,) = _one("ConfigMap")["data"].values()
    raw = yaml.safe_load(text)
    return Pod(spec, proxy, app, parse_config(raw, env=env_for(raw)), raw)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_configmap_embeds_the_kubernetes_config_file() -> None:
    """The ConfigMap holds deploy/kubernetes/config.yaml verbatim, so check-config covers it."""
    (text,) = _one("ConfigMap")["data"].values()
    assert text == (DEPLOY / "kubernetes" / "config.yaml").read_text(encoding="utf-8")


def test_proxy_reads_its_config_from_the_mounted_configmap(pod: Pod) -> None:
    """args name the file the ConfigMap volume provides; mounted as a directory (no subPath)."""
    assert pod.proxy["args"] == ["serve", "-c", CONFIG_PATH]
    directory, _, key = CONFIG_PATH.rpartition("/")
    (mount,) = [m for m in pod.proxy["volumeMounts"] if m["mountPath"] == directory]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    (volume,) = [v for v in pod.spec["volumes"] if v["name"] == mount["name"]]
    configmap = _one("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert key in configmap["data"]


def test_probes_reach_the_admin_listener(pod: Pod) -> None:
    """Liveness on /healthz and readiness on /readyz, on admin.port, bound where kubelet reaches."""
    live, ready = pod.proxy["livenessProbe"]["httpGet"], pod.proxy["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz"
    assert ready["path"] == "/readyz"
    assert _port(pod.proxy, live["port"]) == pod.config.admin.port
    assert _port(pod.proxy, ready["port"]) == pod.config.admin.port
    assert pod.config.admin.host == "0.0.0.0", "kubelet probes the pod IP, not its loopback"
    assert pod.config.listen.host == "127.0.0.1", "a sidecar's proxy serves its pod only"


def test_secret_provides_every_variable_the_config_references(pod: Pod) -> None:
    """Each {env: NAME} of the config is a proxy env var taken from a key of the Secret."""
    secret = _one("Secret")
    keys = {*secret.get("stringData", {}), *secret.get("data", {})}
    env = _env(pod.proxy)
    for name in sorted(env_refs(pod.raw_config)):
        assert name in env, f"config references {name}, the proxy container does not set it"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], name
        assert ref["key"] in keys, f"{name}: Secret has no key {ref['key']}"


def test_placeholder_secret_keeps_the_proxy_from_starting(pod: Pod) -> None:
    """The Secret's placeholder signing key is refused, so nobody runs with it by accident."""
    secret = _one("Secret")["stringData"]
    values = {
        name: secret[e["valueFrom"]["secretKeyRef"]["key"]]
        for name, e in _env(pod.proxy).items()
        if "valueFrom" in e
    }
    with pytest.raises(ConfigError) as error:
        parse_config(pod.raw_config, env=values)
    assert error.value.problems == [
        "token_signing_key: must be at least 32 characters of random data"
    ]


def test_bi_container_uses_the_sidecar_with_caller_credentials_only(pod: Pod) -> None:
    """The BI tool talks to 127.0.0.1:listen.port as a caller and gets no Looker credential."""
    env, proxy_env = _env(pod.app), _env(pod.proxy)
    assert env["LOOKERSDK_BASE_URL"]["value"] == f"http://127.0.0.1:{pod.config.listen.port}"
    (team,) = pod.config.teams.values()
    client_ids = [c.client_id for c in team.callers]
    client_id = env["LOOKERSDK_CLIENT_ID"]["value"]
    assert client_id in client_ids
    index = client_ids.index(client_id)
    variable = pod.raw_config["teams"][team.name]["callers"][index]["client_secret"]["env"]
    caller_ref = proxy_env[variable]["valueFrom"]["secretKeyRef"]
    assert env["LOOKERSDK_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == caller_ref
    app_refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "valueFrom" in e]
    assert app_refs == [caller_ref], "the BI container must not see Looker credentials"


def test_termination_grace_outlasts_drain_and_grace(pod: Pod) -> None:
    """terminationGracePeriodSeconds > shutdown.drain_s + shutdown.grace_s."""
    shutdown = pod.config.shutdown
    assert pod.spec["terminationGracePeriodSeconds"] > shutdown.drain_s + shutdown.grace_s


def test_proxy_container_is_locked_down(pod: Pod) -> None:
    """Non-root (the image's uid), read-only root, no capabilities, resources set."""
    context = pod.proxy["securityContext"]
    run_as_non_root = context.get("runAsNonRoot", pod.spec["securityContext"].get("runAsNonRoot"))
    assert run_as_non_root is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert str(context["runAsUser"]) == final("USER")[-1].args.partition(":")[0]
    resources = pod.proxy["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_declared_container_ports_match_the_config(pod: Pod) -> None:
    """The admin port is declared and matches admin.port; nothing else is exposed."""
    ports = {p["containerPort"] for p in pod.proxy.get("ports", [])}
    assert ports == {pod.config.admin.port}


# --- Docker Compose ------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _seconds(duration: str | int) -> float:
    """A compose duration (``1m30s``, ``10s``, ``500ms``) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _compose_config(services: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The host file mounted as the proxy's config, and its parsed content."""
    for volume in services["proxy"]["volumes"]:
        source, target = volume.split(":")[:2]
        if target == _option(services["proxy"]["command"], "-c"):
            path = (COMPOSE.parent / source).resolve()
            return path, yaml.safe_load(path.read_text(encoding="utf-8"))
    raise AssertionError("the proxy's config file is not mounted")


def _healthcheck(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", "health checks run without a shell"
    return healthcheck_code(test[1:])


def test_compose_builds_emulator_and_proxy_from_the_dockerfile() -> None:
    """emulator and proxy use the image built from this repo's Dockerfile."""
    services = _compose()["services"]
    assert {"emulator", "proxy", "client"} <= services.keys()
    for name in ("emulator", "proxy"):
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert build.get("dockerfile", "Dockerfile") == DOCKERFILE.name
    assert services["emulator"]["image"] == services["proxy"]["image"]


def test_compose_starts_in_dependency_order_on_health() -> None:
    """proxy waits for a healthy emulator, client for a healthy (ready) proxy."""
    services = _compose()["services"]
    assert services["proxy"]["depends_on"]["emulator"]["condition"] == "service_healthy"
    assert services["client"]["depends_on"]["proxy"]["condition"] == "service_healthy"
    assert "/readyz" in _healthcheck(services["proxy"])
    assert f":{_option(services['emulator']['command'], '--port')}/" in _healthcheck(
        services["emulator"]
    )


def test_compose_wiring_matches_the_proxy_config() -> None:
    """Emulator URL, listeners, env vars, caller credentials and stop grace all line up."""
    services = _compose()["services"]
    proxy, client, emulator = services["proxy"], services["client"], services["emulator"]
    _, raw = _compose_config(services)
    config = parse_config(raw, env={k: str(v) for k, v in proxy["environment"].items()})
    assert _option(emulator["command"], "--host") == "0.0.0.0"
    assert config.looker.base_url == f"http://emulator:{_option(emulator['command'], '--port')}"
    assert config.listen.host == "0.0.0.0", "other containers reach the proxy over the network"
    assert env_refs(raw) <= proxy["environment"].keys()
    assert client["environment"]["LOOKERSDK_BASE_URL"] == f"http://proxy:{config.listen.port}"
    (team,) = config.teams.values()
    (caller,) = [
        c for c in team.callers if c.client_id == client["environment"]["LOOKERSDK_CLIENT_ID"]
    ]
    assert caller.client_secret.reveal() == client["environment"]["LOOKERSDK_CLIENT_SECRET"]
    assert client["environment"]["EXPECTED_WORKSPACE"] == team.workspace
    stop = _seconds(proxy["stop_grace_period"])
    assert stop > config.shutdown.drain_s + config.shutdown.grace_s


# --- the compose example as plain processes ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _on_port(code: str, old: int | str, new: int) -> str:
    """A health check's code, aimed at ``new`` instead of port ``old`` on 127.0.0.1."""
    assert f"127.0.0.1:{old}/" in code
    return code.replace(f"127.0.0.1:{old}/", f"127.0.0.1:{new}/")


def _check(code: str) -> int:
    """Run a health check's Python code, as the container engine would, and return its status."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=10, check=False
    ).returncode


def _wait_healthy(code: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while _check(code) != 0:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"never healthy:\n{log.read_text()}"
        time.sleep(0.2)


@dataclass
class Stack:
    proxy: subprocess.Popen[bytes]
    proxy_log: Path
    proxy_port: int
    config: Config
    services: dict[str, Any]


@pytest.fixture(name="stack")
def _stack(tmp_path: Path) -> Iterator[Stack]:
    """deploy/compose.yaml without Docker: emulator and proxy as processes, on free ports."""
    services = _compose()["services"]
    emu_port, proxy_port, admin_port = _free_port(), _free_port(), _free_port()
    emu_argv_orig = services["emulator"]["command"]
    emu_argv = list(emu_argv_orig)
    emu_argv[emu_argv.index("--host") + 1] = "127.0.0.1"
    emu_argv[emu_argv.index("--port") + 1] = str(emu_port)
    _, raw = _compose_config(services)
    raw["looker"]["base_url"] = f"http://127.0.0.1:{emu_port}"
    raw["listen"] = {"host": "127.0.0.1", "port": proxy_port}
    raw["admin"] = {"host": "127.0.0.1", "port": admin_port}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    proxy_argv = list(services["proxy"]["command"])
    proxy_argv[proxy_argv.index("-c") + 1] = str(config_file)
    proxy_env = {k: str(v) for k, v in services["proxy"]["environment"].items()}
    env = {**os.environ, **proxy_env}
    module = [sys.executable, "-m", "workspace_proxy"]
    emu_log, proxy_log = tmp_path / "emulator.log", tmp_path / "proxy.log"
    with emu_log.open("wb") as emu_out, proxy_log.open("wb") as proxy_out:
        emulator = subprocess.Popen([*module, *emu_argv], stdout=emu_out, stderr=emu_out, env=env)
        proxy = None
        try:
            emu_check = _on_port(
                _healthcheck(services["emulator"]), _option(emu_argv_orig, "--port"), emu_port
            )
            _wait_healthy(emu_check, emulator, emu_log)
            proxy = subprocess.Popen(
                [*module, *proxy_argv], stdout=proxy_out, stderr=proxy_out, env=env
            )
            config = parse_config(raw, env=proxy_env)
            yield Stack(proxy, proxy_log, proxy_port, config, services)
        finally:
            for proc in (p for p in (proxy, emulator) if p is not None):
                if proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.mark.timeout(120)
def test_compose_example_runs_end_to_end(stack: Stack) -> None:
    """Health checks pass, the client sees dev across re-login, SIGTERM drains and exits 0."""
    admin = stack.config.admin.port
    compose_admin = _compose_config(stack.services)[1]["admin"]["port"]
    proxy_check = _on_port(_healthcheck(stack.services["proxy"]), compose_admin, admin)
    _wait_healthy(proxy_check, stack.proxy, stack.proxy_log)
    (image_check,) = final("HEALTHCHECK")
    argv = json.loads(image_check.args.partition("CMD ")[2])
    dockerfile_check = _on_port(healthcheck_code(argv), config_defaults().admin.port, admin)
    assert _check(dockerfile_check) == 0

    client_env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKERSDK_")}
    client_env.update({k: str(v) for k, v in stack.services["client"]["environment"].items()})
    client_env["LOOKERSDK_BASE_URL"] = f"http://127.0.0.1:{stack.proxy_port}"
    command = stack.services["client"]["command"]
    assert command[-1].endswith("python /client/client.py"), shlex.join(command)
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "client.py")],
        capture_output=True,
        text=True,
        env=client_env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr + stack.proxy_log.read_text()
    assert "session(): workspace = dev" in result.stdout
    assert "after logout and the SDK's next login: workspace = dev" in result.stdout

    stack.proxy.send_signal(signal.SIGTERM)
    shutdown = stack.config.shutdown
    assert stack.proxy.wait(timeout=shutdown.drain_s + shutdown.grace_s + 10) == 0
    assert _check(dockerfile_check) != 0, "the health check must fail once the proxy is gone"
