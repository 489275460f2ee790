"""The container: Dockerfile, compose.yaml, .env.example, and the image's entry command.

Everywhere: compose.yaml against a compact Compose schema plus the semantics we rely on; the
Dockerfile's instructions; and the entry command itself, from the wheel the image installs (built
with `uv build`, installed with the lock file's pins into a fresh venv), run against a real
database, with the Dockerfile's own HEALTHCHECK command pointed at it.

With LISTENER_TEST_IMAGE=1 and a Docker engine (see the last section): the image built and run,
and the compose stack brought up, stopped, brought up again and taken down, with the commands
README.md prints.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import yaml

from listener.settings import Settings
from tests.helpers import enqueue, make_campaign, make_leads, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

TABLES = {"leads", "campaigns", "campaign_runs", "campaign_messages", "listener_migrations"}

# --------------------------------------------------------------------------------------------
# compose.yaml
# --------------------------------------------------------------------------------------------

_DURATION = r"^(\d+(\.\d+)?(us|ms|s|m|h))+$"
_STRINGS = {"type": "array", "items": {"type": "string"}}
_STRING_OR_LIST = {"oneOf": [{"type": "string"}, _STRINGS]}
_SCALAR = {"type": ["string", "number", "boolean", "null"]}

# A compact subset of the Compose Specification schema (compose-spec.json): every key we use,
# typed as the spec types it, and nothing unknown at the service level, so a typo fails here.
COMPOSE_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["services"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "version": {"type": "string"},
        "services": {
            "type": "object",
            "minProperties": 1,
            "patternProperties": {"^[a-zA-Z0-9._-]+$": {"$ref": "#/definitions/service"}},
            "additionalProperties": False,
        },
        "volumes": {
            "type": "object",
            "patternProperties": {
                "^[a-zA-Z0-9._-]+$": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "properties": {
                                "driver": {"type": "string"},
                                "driver_opts": {"type": "object"},
                                "external": {"type": "boolean"},
                                "name": {"type": "string"},
                                "labels": {"type": ["object", "array"]},
                            },
                            "additionalProperties": False,
                        },
                    ]
                }
            },
            "additionalProperties": False,
        },
        "networks": {"type": "object"},
    },
    "patternProperties": {"^x-": {}},
    "additionalProperties": False,
    "definitions": {
        "service": {
            "type": "object",
            "properties": {
                "image": {"type": "string"},
                "build": {
                    "oneOf": [
                        {"type": "string"},
                        {
                            "type": "object",
                            "properties": {
                                "context": {"type": "string"},
                                "dockerfile": {"type": "string"},
                                "target": {"type": "string"},
                                "args": {"type": ["object", "array"]},
                            },
                            "additionalProperties": False,
                        },
                    ]
                },
                "command": _STRING_OR_LIST,
                "entrypoint": _STRING_OR_LIST,
                "depends_on": {
                    "oneOf": [
                        _STRINGS,
                        {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "required": ["condition"],
                                "properties": {
                                    "condition": {
                                        "enum": [
                                            "service_started",
                                            "service_healthy",
                                            "service_completed_successfully",
                                        ]
                                    },
                                    "restart": {"type": "boolean"},
                                    "required": {"type": "boolean"},
                                },
                                "additionalProperties": False,
                            },
                        },
                    ]
                },
                "healthcheck": {
                    "type": "object",
                    "properties": {
                        "test": _STRING_OR_LIST,
                        "interval": {"type": "string", "pattern": _DURATION},
                        "timeout": {"type": "string", "pattern": _DURATION},
                        "start_period": {"type": "string", "pattern": _DURATION},
                        "start_interval": {"type": "string", "pattern": _DURATION},
                        "retries": {"type": "integer", "minimum": 0},
                        "disable": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
                "env_file": {
                    "oneOf": [
                        {"type": "string"},
                        {
                            "type": "array",
                            "items": {
                                "oneOf": [
                                    {"type": "string"},
                                    {
                                        "type": "object",
                                        "required": ["path"],
                                        "properties": {
                                            "path": {"type": "string"},
                                            "required": {"type": "boolean"},
                                            "format": {"type": "string"},
                                        },
                                        "additionalProperties": False,
                                    },
                                ]
                            },
                        },
                    ]
                },
                "environment": {
                    "oneOf": [
                        {
                            "type": "object",
                            "patternProperties": {"^[A-Za-z_][A-Za-z0-9_]*$": _SCALAR},
                            "additionalProperties": False,
                        },
                        _STRINGS,
                    ]
                },
                "ports": {
                    "type": "array",
                    "items": {"type": ["string", "integer", "object"]},
                },
                "expose": {"type": "array", "items": {"type": ["string", "integer"]}},
                "restart": {
                    "type": "string",
                    "pattern": r"^(no|always|unless-stopped|on-failure(:\d+)?)$",
                },
                "volumes": {"type": "array", "items": {"type": ["string", "object"]}},
                "stop_grace_period": {"type": "string", "pattern": _DURATION},
                "stop_signal": {"type": "string"},
                "init": {"type": "boolean"},
                "user": {"type": "string"},
                "container_name": {"type": "string"},
                "labels": {"type": ["object", "array"]},
                "networks": {"type": ["object", "array"]},
                "deploy": {"type": "object"},
                "pull_policy": {"enum": ["always", "never", "missing", "if_not_present", "build"]},
                "read_only": {"type": "boolean"},
                "logging": {"type": "object"},
            },
            "patternProperties": {"^x-": {}},
            "additionalProperties": False,
        }
    },
}

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")
_FROM_ENV = "from-env"
_SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|APIKEY|_KEY)$", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _placeholders(value: str) -> str:
    """The value with each `${...}` replaced by a marker, so a URL holding one can be parsed."""
    return _INTERPOLATION.sub(_FROM_ENV, value)


def _seconds(duration: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_matches_the_schema(compose: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(COMPOSE_SCHEMA)
    jsonschema.validate(compose, COMPOSE_SCHEMA)
    assert {"postgres", "migrate", "listener"} <= set(compose["services"])


def test_compose_schema_rejects_what_compose_would() -> None:
    # The schema is only worth something if it says no.
    bad = [
        {"services": {"l": {"image": "x", "restart": False}}},  # YAML's unquoted `no`
        {"services": {"l": {"image": "x", "healthchek": {}}}},
        {"services": {"l": {"depends_on": {"m": {"condition": "completed"}}}}},
        {"services": {"l": {"stop_grace_period": "30"}}},
        {"services": {}, "volume": {}},
    ]
    for doc in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, COMPOSE_SCHEMA)


def test_compose_runs_migrate_once_before_the_listener(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres, migrate, listener = services["postgres"], services["migrate"], services["listener"]

    assert str(postgres["image"]).startswith("postgres:15")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    mounts = [str(v).split(":") for v in postgres["volumes"]]
    assert any(m[0] in compose["volumes"] and m[1] == "/var/lib/postgresql/data" for m in mounts)

    assert migrate["build"] == "."
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"

    assert listener["build"] == "."
    assert listener["command"] == ["run"]
    assert listener["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert listener["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Two services building one image tag race each other (BuildKit: "image already exists").
    built_tags = [s["image"] for s in services.values() if "build" in s and "image" in s]
    assert len(built_tags) == len(set(built_tags)), built_tags
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown {dependency}"

    # Both containers reach the compose Postgres by its service name.
    for service in (migrate, listener):
        url = _placeholders(_environment(service)["DATABASE_URL"])
        assert psycopg.conninfo.conninfo_to_dict(url)["host"] == "postgres"


def test_compose_listener_is_health_checked_restarted_and_drained(compose: dict[str, Any]) -> None:
    listener = compose["services"]["listener"]
    defaults = Settings.model_fields

    test = listener["healthcheck"]["test"]
    assert "/healthz" in (" ".join(test) if isinstance(test, list) else test)
    assert listener["restart"] in {"unless-stopped", "always", "on-failure"}

    port = defaults["metrics_port"].default
    env = _environment(listener)
    assert env.get("LISTENER_METRICS_PORT", str(port)) == str(port)
    assert f":{port}" in " ".join(test)
    published = [str(p) for p in listener["ports"]]
    assert any(p.endswith(f":{port}") for p in published), published

    # Docker's SIGKILL must come after the listener's own drain deadline.
    grace = defaults["shutdown_grace"].default
    assert isinstance(grace, timedelta)
    assert _seconds(listener["stop_grace_period"]) > grace.total_seconds()
    assert listener.get("stop_signal", "SIGTERM") == "SIGTERM"

    # Settings come from .env; a missing .env is no error (the shell may provide them).
    assert {"path": ".env", "required": False} in listener["env_file"]


def test_compose_commits_no_secret(compose: dict[str, Any]) -> None:
    secret_settings = {
        info.validation_alias
        for info in Settings.model_fields.values()
        if "SecretStr" in repr(info.annotation)
    }
    assert secret_settings >= {"OPENROUTER_API_KEY", "EVOLUTION_API_KEY"}
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if key in secret_settings or _SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[^}]+\}", value), f"{name}.{key} holds a literal secret"
            if "://" in value:
                info = psycopg.conninfo.conninfo_to_dict(_placeholders(value))
                password = info.get("password")
                assert password in {None, _FROM_ENV}, f"{name}.{key} has a password in its URL"
    # Whatever compose interpolates, .env.example tells the operator about.
    documented = set(_env_example())
    for variable in _INTERPOLATION.findall(COMPOSE.read_text(encoding="utf-8")):
        assert variable in documented, f"${{{variable}}} is not in .env.example"


# --------------------------------------------------------------------------------------------
# .env.example
# --------------------------------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    """Every `NAME=value` of .env.example, commented out or not."""
    found = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def test_env_example_lists_every_setting_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = _env_example()
    aliases = {name: str(info.validation_alias) for name, info in Settings.model_fields.items()}
    missing = sorted(set(aliases.values()) - set(listed))
    assert not missing, f".env.example lacks {missing}"

    for alias in aliases.values():
        monkeypatch.delenv(alias, raising=False)
    providers = {
        "openrouter_api_key": "k",
        "evolution_api_url": "http://evolution",
        "evolution_api_key": "k",
        "evolution_instance": "i",
    }
    base = Settings(**providers)  # type: ignore[arg-type]
    for name, alias in aliases.items():
        value = listed[alias]
        if not value or name in {"database_url", "worker_id"} or name in providers:
            continue
        documented = Settings(**{**providers, alias: value})  # type: ignore[arg-type]
        assert getattr(documented, name) == getattr(base, name), (
            f"{alias}={value} is not the default"
        )

    # Secrets ship empty, and nothing in the file is a live value.
    for alias in ("OPENROUTER_API_KEY", "EVOLUTION_API_KEY", "POSTGRES_PASSWORD"):
        assert listed[alias] == ""


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile with their instructions (keyword, arguments); continuation
    lines joined and comments dropped, as BuildKit does."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1]
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            logical.append(line)
    assert not pending, "the Dockerfile ends inside a continuation"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            flags = [w for w in words if w.startswith("--")]
            rest = words[len(flags) :]
            name = rest[2] if len(rest) == 3 and rest[1].upper() == "AS" else ""
            stages.append(Stage(base=rest[0], name=name))
            continue
        assert stages, f"{keyword} before any FROM"
        stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(stage: Stage) -> list[str]:
    """The argv Docker runs for the stage's HEALTHCHECK (shell form goes through /bin/sh -c)."""
    args = stage.last("HEALTHCHECK")
    match = re.match(r"^((?:--[a-z-]+=\S+\s+)*)CMD\s+(.*)$", args, re.DOTALL)
    assert match, f"HEALTHCHECK without CMD: {args}"
    command = match.group(2).strip()
    return exec_form(command) if command.startswith("[") else ["/bin/sh", "-c", command]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def test_dockerfile_is_multi_stage_from_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert all(s.base == "python:3.11-slim" for s in stages)
    build, runtime = stages[0], stages[-1]
    assert build.name
    copies = runtime.all("COPY")
    assert any(f"--from={build.name}" in c and "/app/.venv" in c for c in copies)
    assert any(f"--from={build.name}" in c and "migrations" in c for c in copies)
    # The runtime image carries no build tool: no pip, no uv.
    for run in runtime.all("RUN"):
        assert "pip install" not in run and "uv " not in run


def test_dockerfile_needs_nothing_from_docker_hub_but_its_base_image() -> None:
    # A `# syntax=` line makes BuildKit fetch a frontend image from Docker Hub before building.
    first = DOCKERFILE.read_text(encoding="utf-8").lstrip().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE), first


def test_dockerfile_installs_from_the_lock_file(stages: list[Stage]) -> None:
    build = stages[0]
    runs = build.all("RUN")
    assert any(re.search(r"pip install\b.*\buv\b", r) for r in runs), "uv comes from pip"
    syncs = [r for r in runs if "uv sync" in r]
    assert syncs
    for sync in syncs:
        flags = shlex.split(sync.split("uv sync", 1)[1].split("&&")[0])
        assert {"--frozen", "--no-dev", "--no-editable"} <= set(flags), sync

    # Lock-first layer caching: the dependency sync runs before the sources are copied.
    order = [(kw, args) for kw, args in build.instructions if kw in {"COPY", "RUN"}]
    first_sync = next(i for i, (kw, a) in enumerate(order) if kw == "RUN" and "uv sync" in a)
    copied_before = " ".join(a for kw, a in order[:first_sync] if kw == "COPY")
    assert "pyproject.toml" in copied_before and "uv.lock" in copied_before
    assert "listener" not in copied_before.replace("listener/", "")
    assert "--no-install-project" in order[first_sync][1]


def test_dockerfile_runs_the_listener_as_non_root(stages: list[Stage]) -> None:
    runtime = stages[-1]
    user = runtime.last("USER").split(":")[0]
    assert user not in {"root", "0"}
    runs = " ".join(runtime.all("RUN"))
    assert re.search(r"useradd\b[^&;]*--uid 10001\b", runs), "the service user is uid 10001"
    assert user == "10001" or re.search(rf"useradd\b[^&;]*--uid 10001\b[^&;]*\b{user}\b", runs)

    assert exec_form(runtime.last("ENTRYPOINT")) == ["listener"]
    assert exec_form(runtime.last("CMD")) == ["run"]
    assert "9464" in runtime.last("EXPOSE").split()

    env = " ".join(runtime.all("ENV"))
    assert re.search(r"\bPATH=/app/\.venv/bin:\$PATH\b", env)
    assert "PYTHONUNBUFFERED=1" in env

    command = " ".join(healthcheck_command(runtime))
    assert "/healthz" in command and "urllib" in command and "curl" not in command


def test_dockerignore_keeps_secrets_and_junk_out_of_the_context() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", ".listener", "bench/results"} <= patterns
    assert not {"listener", "migrations", "uv.lock", "pyproject.toml", "README.md"} & patterns


# --------------------------------------------------------------------------------------------
# The image's entry command, from the same wheel and the same locked dependencies
# --------------------------------------------------------------------------------------------


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv is needed to build the wheel (it builds the image too)"
    return found


def _clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment minus anything that would leak this checkout or its
    settings into the installed command."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DATABASE_URL", "TEST_DATABASE_URL"}
    prefixes = ("LISTENER_", "OPENROUTER_", "EVOLUTION_")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(prefixes)}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path
    workdir: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        # As the image's ENV: the venv first on PATH, unbuffered output.
        path = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"
        return _clean_env(PATH=path, PYTHONUNBUFFERED="1", **extra)

    def run(self, *argv: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            cwd=self.workdir,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """`uv build --wheel`, then a fresh `python -m venv` holding the wheel and the lock file's
    exact dependency versions (what `uv sync --frozen --no-dev --no-editable` puts in the image).
    """
    base = tmp_path_factory.mktemp("image")
    uv = _uv()

    def sh(*argv: str | Path) -> None:
        done = subprocess.run(
            [str(a) for a in argv],
            cwd=ROOT,
            env=_clean_env(UV_NO_PROGRESS="1"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"

    sh(uv, "build", "--wheel", "--quiet", "--out-dir", base / "dist", ROOT)
    (wheel,) = (base / "dist").glob("listener-*.whl")
    sh(
        *(uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--quiet"),
        *("--format", "requirements-txt", "--output-file", base / "requirements.txt"),
    )
    sh(sys.executable, "-m", "venv", "--without-pip", base / "venv")
    python = base / "venv" / "bin" / "python"
    sh(uv, "pip", "install", "--quiet", "--python", python, "-r", base / "requirements.txt", wheel)
    workdir = base / "app"  # not the checkout: nothing of the sources is on sys.path
    workdir.mkdir()
    return Installed(venv=base / "venv", wheel=wheel, workdir=workdir)


def test_wheel_carries_the_migrations(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        assert "listener/_migrations/0001_schema.sql" in names
        # The status page's templates and stylesheet travel inside the package.
        web = ROOT / "listener" / "web"
        for path in sorted([*(web / "templates").iterdir(), web / "static" / "status.css"]):
            assert f"listener/web/{path.relative_to(web).as_posix()}" in names, path.name
        sql_files = sorted((ROOT / "migrations").rglob("*.sql"))
        assert any(path.parent.name == "functions" for path in sql_files)
        for sql_file in sql_files:
            inside = sql_file.relative_to(ROOT / "migrations").as_posix()
            packed = wheel.read(f"listener/_migrations/{inside}")
            assert packed == sql_file.read_bytes(), inside

    done = installed.run(
        "python",
        "-I",
        "-c",
        "import listener, listener.commands.migration_files as m; "
        "print(listener.__file__); print(m.migrations_dir())",
    )
    assert done.returncode == 0, done.stderr
    package, folder = (Path(line) for line in done.stdout.split())
    assert package.is_relative_to(installed.venv), "the installed package, not the checkout"
    assert folder == package.parent / "_migrations"


def test_entry_command_help(installed: Installed) -> None:
    done = installed.run(str(installed.bin / "listener"), "--help")
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout and "migrate" in done.stdout


def test_entry_command_migrates_an_empty_database(installed: Installed, empty_db_url: str) -> None:
    listener = str(installed.bin / "listener")
    first = installed.run(listener, "migrate", DATABASE_URL=empty_db_url)
    assert first.returncode == 0, first.stderr
    applied = sorted(p.name for p in (ROOT / "migrations").glob("[0-9]*_*.sql"))
    applied += sorted(f"functions/{p.name}" for p in (ROOT / "migrations/functions").glob("*.sql"))
    assert applied and all(f"applied {name}" in first.stdout for name in applied), first.stdout

    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        assert {r[0] for r in rows} >= TABLES
        versions = conn.execute("SELECT count(*) FROM listener_migrations").fetchone()
        assert versions == (len(applied),)

    again = installed.run(listener, "migrate", DATABASE_URL=empty_db_url)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def probe(installed: Installed, stages: list[Stage]) -> Any:
    """Run the Dockerfile's HEALTHCHECK command, as Docker would, against a port."""
    argv = healthcheck_command(stages[-1])

    def run(port: int) -> subprocess.CompletedProcess[str]:
        return installed.run(*argv, timeout=10, LISTENER_METRICS_PORT=str(port))

    return run


def test_healthcheck_fails_when_nothing_listens(probe: Any) -> None:
    assert probe(_free_port()).returncode != 0


@pytest.fixture
def answering_503() -> Iterator[int]:
    class Unhealthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"ok": false}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_fails_on_503(probe: Any, answering_503: int) -> None:
    assert probe(answering_503).returncode != 0


def test_entry_command_runs_is_healthy_sends_and_drains_on_sigterm(
    installed: Installed, probe: Any, db_url: str
) -> None:
    port = _free_port()
    env = installed.env(
        DATABASE_URL=db_url,
        LISTENER_LLM="sandbox",
        LISTENER_SENDER="sandbox",
        LISTENER_METRICS_PORT=str(port),
        LISTENER_PART_DELAY_MS="0",
        LISTENER_SHUTDOWN_GRACE="5s",
        LISTENER_DATA_DIR=str(installed.workdir / "data"),
    )
    # Exec form, like ENTRYPOINT ["listener"] + CMD ["run"]: the process gets SIGTERM itself.
    process = subprocess.Popen(
        [str(installed.bin / "listener"), "run"],
        cwd=installed.workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while probe(port).returncode != 0:
            assert process.poll() is None, process.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "never healthy"
            time.sleep(0.2)

        with psycopg.connect(db_url, autocommit=True) as db:
            enqueue(db, make_campaign(db), make_leads(db, 2))
            wait_until(
                lambda: (
                    db.execute(
                        "SELECT count(*) FROM campaign_messages WHERE status = 'sent'"
                    ).fetchone()
                    == (2,)
                ),
                timeout=15,
            )

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
        assert process.returncode == 0, output[-3000:]
        assert "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


# --------------------------------------------------------------------------------------------
# The image and the compose stack on a Docker engine: what an operator does, with the commands
# README.md prints
# --------------------------------------------------------------------------------------------
#
# They build images and start containers (a minute or two), so one run of CI does them, not
# every suite pass: LISTENER_TEST_IMAGE=1 turns them on. They need an engine that answers and
# the base images (the workplace tool offline-docker.sh starts one and builds stand-ins where no
# registry is reachable); without either they skip, saying which.

README = ROOT / "README.md"
BASE_IMAGES = ("python:3.11-slim", "postgres:15")
SANDBOX_OVERRIDE = Path(__file__).with_name("compose.sandbox.yaml")
IMAGE_ENABLED = os.environ.get("LISTENER_TEST_IMAGE", "").strip().lower() in {"1", "true", "yes"}


def _docker(
    *argv: str, timeout: float = 60, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (
        f"{shlex.join(done.args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def docker_engine() -> None:
    """Skips, saying why, unless turned on and an engine with the base images answers."""
    if not IMAGE_ENABLED:
        pytest.skip(
            "builds and runs the image (a minute or two): set LISTENER_TEST_IMAGE=1 "
            "(.ci/run does, once)"
        )
    if shutil.which("docker") is None:
        pytest.skip("no docker command on PATH")
    info = _docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    if info.returncode != 0 or not info.stdout.strip():
        why = " ".join((info.stderr or info.stdout).split())[:200]
        pytest.skip(f"no Docker engine answers ({why})")
    missing = [i for i in BASE_IMAGES if _docker("image", "inspect", i).returncode != 0]
    if missing:
        pytest.skip(
            f"base images absent: {', '.join(missing)} "
            "(no registry here? the workplace tool offline-docker.sh builds stand-ins)"
        )


def _readme_commands() -> list[str]:
    """The command lines of the bash blocks in README.md's container section, comments cut."""
    text = README.read_text(encoding="utf-8")
    assert "\n## The container\n" in text, "README.md has no '## The container' section"
    section = text.split("\n## The container\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        for line in block.splitlines():
            command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if command:
                lines.append(command)
    return lines


def readme_command(start: str, **names: str) -> list[str]:
    """The README's one command line starting with `start`, as argv, each word found in `names`
    replaced (the test's own image tag, container name, host port...)."""
    found = [c for c in _readme_commands() if c.startswith(start)]
    assert len(found) == 1, f"README's container section should hold one `{start} ...`: {found}"
    return [names.get(word, word) for word in shlex.split(found[0])]


def test_readme_prints_the_commands_these_tests_run() -> None:
    # The same lookups as the tests below, so a README edit that breaks them fails everywhere,
    # not only where Docker runs.
    for start in (
        "docker build",
        "docker run --rm",
        "docker run -d",
        "docker inspect",
        "curl",
        "docker stop",
        "cp .env.example",
        "docker compose up",
        "docker compose ps",
        "docker compose logs",
        "docker compose stop",
        "docker compose down",
    ):
        assert readme_command(start)[0] in {"docker", "curl", "cp"}
    assert readme_command("docker run -d")[-1] == readme_command("docker build")[-2]


def _wait_for(check: Any, what: str, timeout: float, interval: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(interval)


def _healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        assert answer.status == 200
        body = json.loads(answer.read())
    assert isinstance(body, dict)
    return body


def _multi_part_content() -> tuple[str, int]:
    """Content that the default part limit cuts into several parts, and how many."""
    from listener.queue.split import split_content

    content = " ".join(f"Frase {i}: " + "palavra " * 70 + "fim." for i in range(3))
    parts = len(split_content(content))
    assert parts >= 2
    return content, parts


@dataclass
class DockerRun:
    """Names for one test's containers, all removed at the end."""

    suffix: str = field(default_factory=lambda: os.urandom(4).hex())
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def name(self, role: str) -> str:
        return f"listener-test-{role}-{self.suffix}"

    def cleanup(self) -> None:
        for container in self.containers:
            _docker("rm", "--force", "--volumes", container)
        for network in self.networks:
            _docker("network", "rm", network)
        for image in self.images:
            _docker("image", "rm", "--force", image)


@pytest.fixture
def docker_run(docker_engine: None) -> Iterator[DockerRun]:
    run = DockerRun()
    try:
        yield run
    finally:
        run.cleanup()


def _start_postgres(run: DockerRun, network: str, password: str) -> tuple[str, str]:
    """A fresh postgres:15 on `network`: its name there, and a DSN from this host."""
    name = run.name("pg")
    run.containers.append(name)
    _ok(
        _docker(
            *("run", "--detach", "--name", name, "--network", network),
            *("--env", f"POSTGRES_PASSWORD={password}", "--publish", "127.0.0.1::5432"),
            "postgres:15",
        )
    )
    port = _ok(_docker("port", name, "5432/tcp")).split()[0].rsplit(":", 1)[1]
    url = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"

    def answers() -> bool:
        try:
            psycopg.connect(url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    _wait_for(answers, "the test Postgres container answers", timeout=60)
    return name, url


@pytest.mark.timeout(600)
def test_docker_image_migrates_runs_healthy_sends_and_drains_on_stop(
    docker_run: DockerRun, tmp_path: Path
) -> None:
    tag = docker_run.name("image")
    docker_run.images.append(tag)
    _ok(_docker(*readme_command("docker build", listener=tag)[1:], timeout=540))

    # The service user, not root.
    assert _ok(_docker("run", "--rm", "--entrypoint", "id", tag, "-u")).strip() == "10001"

    # A fresh database in a Postgres container; the listener's containers reach it by name on
    # a network of their own (the one word the README's commands do not carry).
    network = docker_run.name("net")
    _ok(_docker("network", "create", network))
    docker_run.networks.append(network)
    password = os.urandom(8).hex()
    pg_name, db_url = _start_postgres(docker_run, network, password)
    content, parts = _multi_part_content()
    (tmp_path / ".env").write_text(
        f"DATABASE_URL=postgresql://postgres:{password}@{pg_name}:5432/postgres\n"
        "LISTENER_LLM=sandbox\n"
        "LISTENER_SENDER=sandbox\n"
        # Between the parts of one message: long enough to stop the container mid-message.
        "LISTENER_PART_DELAY_MS=3000\n",
        encoding="utf-8",
    )

    def on_network(argv: list[str]) -> list[str]:
        assert argv[:2] == ["docker", "run"]
        return ["run", "--network", network, *argv[2:]]

    migrate = _docker(*on_network(readme_command("docker run --rm", listener=tag)), cwd=tmp_path)
    applied = sorted(p.name for p in (ROOT / "migrations").glob("[0-9]*_*.sql"))
    assert all(f"applied {name}" in _ok(migrate) for name in applied), migrate.stdout
    with psycopg.connect(db_url, autocommit=True) as db:
        count = db.execute(
            "SELECT count(*) FILTER (WHERE version NOT LIKE 'functions/%'),"
            " count(*) FILTER (WHERE version LIKE 'functions/%') FROM listener_migrations"
        ).fetchone()
        functions = list((ROOT / "migrations" / "functions").glob("*.sql"))
        assert count == (len(applied), len(functions))

    port = _free_port()
    name = docker_run.name("listener")
    docker_run.containers.append(name)
    start = readme_command("docker run -d", listener=tag, **{"9464:9464": f"127.0.0.1:{port}:9464"})
    # `--name listener` and the image `listener`: the first becomes the container's name.
    start[start.index("--name") + 1] = name
    _ok(_docker(*on_network(start), cwd=tmp_path))

    health = readme_command("docker inspect", listener=name)[1:]

    def healthy() -> bool:
        status = _ok(_docker(*health)).strip()
        assert status in {"starting", "healthy"}, (status, _docker("logs", name).stderr[-3000:])
        return status == "healthy"

    # The first check runs 15 s (the interval) after the start.
    _wait_for(healthy, "HEALTHCHECK says healthy", timeout=90)
    curl = readme_command(
        "curl", **{"http://localhost:9464/healthz": f"http://127.0.0.1:{port}/healthz"}
    )
    if shutil.which("curl"):
        assert json.loads(
            _ok(subprocess.run(curl, capture_output=True, text=True, timeout=20, check=False))
        )
    assert _healthz(port)

    with psycopg.connect(db_url, autocommit=True) as db:
        campaign = make_campaign(db)
        enqueue(db, campaign, make_leads(db, 3))

        def all_sent() -> bool:
            row = db.execute("SELECT count(*) FROM campaign_messages WHERE status = 'sent'")
            return row.fetchone() == (3,)

        _wait_for(all_sent, "three rows inserted with SQL are sent", timeout=60)
        outbox = db.execute("SELECT count(*) FROM sandbox_outbox").fetchone()
        assert outbox == (3,)

        # One message of several parts, 3 s apart: stop the container once its first part is
        # out. SIGTERM reaches the listener (PID 1), which finishes the message and exits 0.
        (message,) = enqueue(db, campaign, make_leads(db, 1, prefix="55219"), content=content)

        def in_flight() -> bool:
            row = db.execute(
                "SELECT status, parts_sent FROM campaign_messages WHERE id = %s", (message,)
            ).fetchone()
            assert row is not None and row[0] in {"pending", "processing"}, row
            return row[0] == "processing" and row[1] >= 1

        _wait_for(in_flight, "the message's first part is sent", timeout=60, interval=0.1)
        _ok(_docker(*readme_command("docker stop", listener=name)[1:], timeout=60))

        state = _ok(
            _docker("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", name)
        )
        logs = _docker("logs", name)
        assert state.split() == ["0", "false"], logs.stderr[-3000:]
        row = db.execute(
            "SELECT status, parts_sent FROM campaign_messages WHERE id = %s", (message,)
        ).fetchone()
        assert row == ("sent", parts), logs.stderr[-3000:]
    assert "draining" in logs.stderr and "Traceback" not in logs.stderr, logs.stderr[-3000:]


def _compose_ps(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each service's container: State, Health, ExitCode (`docker compose ps -a`, as JSON)."""
    argv = [*readme_command("docker compose ps")[1:], "--format", "json"]
    text = _ok(_docker(*argv, env=env)).strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines()]
    return {row["Service"]: row for row in rows}


def _psql(env: dict[str, str], query: str) -> str:
    """A statement run by psql inside the stack's postgres container, as an operator would."""
    argv = ["compose", "exec", "-T", "postgres", "psql", "-U", "listener", "-d", "listener"]
    return _ok(_docker(*argv, "-v", "ON_ERROR_STOP=1", "-Atc", query, env=env)).strip()


@pytest.mark.timeout(600)
def test_docker_compose_stack_migrates_once_sends_stops_cleanly_and_comes_back(
    docker_engine: None,
) -> None:
    project = f"listener-test-{os.urandom(4).hex()}"
    port = _free_port()
    env = {
        **_clean_env(),
        # README's `docker compose ...` lines as printed; these choose the files and names.
        "COMPOSE_PROJECT_NAME": project,
        "COMPOSE_FILE": os.pathsep.join(
            [str(COMPOSE.relative_to(ROOT)), str(SANDBOX_OVERRIDE.relative_to(ROOT))]
        ),
        "POSTGRES_PASSWORD": os.urandom(8).hex(),
        "LISTENER_TEST_PORT": str(port),
    }
    if _docker("compose", "version", env=env).returncode != 0:
        pytest.skip("the docker compose v2 plugin is absent (offline-docker.sh --compose adds it)")

    def compose(start: str, timeout: float = 120) -> str:
        return _ok(_docker(*readme_command(start)[1:], env=env, timeout=timeout))

    try:
        compose("docker compose up", timeout=540)
        services = _compose_ps(env)
        assert set(services) == {"postgres", "migrate", "listener"}, services
        assert (services["postgres"]["State"], services["postgres"]["Health"]) == (
            "running",
            "healthy",
        )
        assert (services["migrate"]["State"], services["migrate"]["ExitCode"]) == ("exited", 0)
        assert (services["listener"]["State"], services["listener"]["Health"]) == (
            "running",
            "healthy",
        )
        assert _healthz(port)

        _psql(
            env,
            "WITH c AS (INSERT INTO campaigns (name, prompt) VALUES ('Compose', 'Be brief.') "
            "RETURNING id), l AS (INSERT INTO leads (name, phone, company, city) VALUES "
            "('Ana', '5511987654321', 'Padaria Ana', 'Campinas') RETURNING id) "
            "INSERT INTO campaign_messages (campaign_id, lead_id) SELECT c.id, l.id FROM c, l",
        )
        _wait_for(
            lambda: _psql(env, "SELECT status FROM campaign_messages") == "sent",
            "the row inserted with SQL is sent",
            timeout=60,
        )

        compose("docker compose stop")
        stopped = _compose_ps(env)
        assert {s: (r["State"], r["ExitCode"]) for s, r in stopped.items()} == {
            "postgres": ("exited", 0),
            "migrate": ("exited", 0),
            "listener": ("exited", 0),
        }

        # Again on the same volume: migrate finds nothing to do, the row is still sent.
        compose("docker compose up", timeout=300)
        logs = compose("docker compose logs")
        assert logs.count("applied 0001_schema.sql") == 1, logs
        assert logs.count("database is up to date") == 1, logs
        assert _psql(env, "SELECT status FROM campaign_messages") == "sent"

        compose("docker compose down")
        label = f"label=com.docker.compose.project={project}"
        assert not _ok(_docker("ps", "--all", "--quiet", "--filter", label)).strip()
        assert not _ok(_docker("volume", "ls", "--quiet", "--filter", label)).strip()
        assert not _ok(_docker("network", "ls", "--quiet", "--filter", label)).strip()
    finally:
        _docker("compose", "down", "--volumes", "--rmi", "local", env=env, timeout=120)
