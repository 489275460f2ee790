"""The listener's settings: one typed object read from the environment (pydantic-settings).

Every name in README.md's settings table is read here under that exact environment name.
Durations accept a number with a unit (`ms`, `s`, `m`, `h`); a bare number means seconds.
Secrets are `SecretStr`, so they never appear in a repr or a log line.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from listener.errors import ConfigurationError
from listener.phones import DEFAULT_REGION, valid_region

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


#: The longest duration any setting or option takes (ten years): longer is a typo, and would
#: overflow dates.
MAX_DURATION = timedelta(days=3650)


def parse_duration(value: Any, *, bare_unit: str | None = None) -> timedelta:
    """Turn `250ms`, `5s`, `5m`, `1h`, a bare number (seconds, or `bare_unit`) or a timedelta
    into a timedelta of at most ten years."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) * _UNIT_SECONDS[bare_unit]
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        number, unit = match.groups()
        seconds = float(number) * _UNIT_SECONDS[unit or bare_unit]
    else:
        raise ValueError(f"not a duration: {value!r} (use a number with ms, s, m or h, like 5m)")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"too long: {value!r} (at most {MAX_DURATION.days} days)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """A duration the way settings are written, in its largest exact unit: `250ms`, `1.5s`,
    `90s`, `5m`, `90m`, `24h`. The one formatter of the package: what it prints reads back
    through `parse_duration` as the same duration."""
    micros = value // timedelta(microseconds=1)
    if micros < 0:
        return "-" + format_duration(-value)
    if micros == 0:
        return "0s"
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        if micros >= size and micros % size == 0:
            return f"{micros // size}{unit}"
    if micros >= 1_000_000:
        return _decimal(micros, 1_000_000) + "s"
    return _decimal(micros, 1_000) + "ms"


def _decimal(micros: int, scale: int) -> str:
    """`micros / scale` written exactly, without trailing zeros (no float rounding)."""
    whole, rest = divmod(micros, scale)
    if not rest:
        return str(whole)
    digits = len(str(scale)) - 1
    return f"{whole}.{str(rest).rjust(digits, '0').rstrip('0')}"


def parse_milliseconds(value: Any) -> timedelta:
    """A duration whose bare numbers are milliseconds (LISTENER_PART_DELAY_MS)."""
    return parse_duration(value, bare_unit="ms")


def parse_durations(value: Any) -> tuple[timedelta, ...]:
    """Parse a comma-separated list of durations such as `5m,15m,30m` (empty means none)."""
    if isinstance(value, list | tuple):
        return tuple(parse_duration(v) for v in value)
    if isinstance(value, str):
        items = [v for v in (part.strip() for part in value.split(",")) if v]
        return tuple(parse_duration(v) for v in items)
    raise ValueError(f"not a list of durations: {value!r}")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Milliseconds = Annotated[timedelta, BeforeValidator(parse_milliseconds)]
Durations = Annotated[tuple[timedelta, ...], NoDecode, BeforeValidator(parse_durations)]


def parse_models(value: Any) -> tuple[str, ...]:
    """A comma-separated list of model names (blank entries dropped, order kept)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items)
    return tuple(name for name in names if name)


Models = Annotated[tuple[str, ...], NoDecode, BeforeValidator(parse_models)]


def parse_warmup(value: Any) -> tuple[int, ...]:
    """LISTENER_WARMUP: messages a day for each day of a number's warm-up, comma-separated
    whole numbers above zero (`20,30,45`); empty: no warm-up caps."""
    items = value.split(",") if isinstance(value, str) else list(value)
    texts = [str(item).strip() for item in items]
    texts = [] if texts == [""] else texts
    caps: list[int] = []
    for text in texts:
        if not text.isdigit() or int(text) <= 0:
            raise ValueError(
                "must be whole numbers above zero separated by commas, one per day of the "
                f"warm-up (e.g. 20,30,45), got {text!r}"
            )
        caps.append(int(text))
    return tuple(caps)


Warmup = Annotated[tuple[int, ...], NoDecode, BeforeValidator(parse_warmup)]

#: The warm-up of a new number: messages a day on each day since it started (README.md,
#: "Sender pools").
DEFAULT_WARMUP = (20, 30, 45, 60, 80, 100, 130, 160, 200)


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    """Everything the listener reads from its environment. Fields are named for the code;
    each one's environment name is its alias (the original contract's names, plus the
    `LISTENER_*` extras)."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    # --- the original contract --------------------------------------------------------------
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    openrouter_api_key: SecretStr | None = Field(None, validation_alias="OPENROUTER_API_KEY")
    openrouter_base_url: str = Field(
        "https://openrouter.ai/api/v1", validation_alias="OPENROUTER_BASE_URL"
    )
    model: str = Field("openai/gpt-4o-mini", validation_alias="LISTENER_MODEL")
    # Replies understood: the cheap model that classifies leads' replies, how often unclassified
    # ones are looked for (a reply filed by this listener's receiver wakes it at once too), and
    # how long a classifier's failure waits before its next try (doubling, up to an hour).
    classifier_model: str = Field(
        "openai/gpt-4o-mini", min_length=1, validation_alias="LISTENER_CLASSIFIER_MODEL"
    )
    classify_interval: Duration = Field(
        timedelta(seconds=5), validation_alias="LISTENER_CLASSIFY_INTERVAL"
    )
    classify_retry: Duration = Field(
        timedelta(seconds=30), validation_alias="LISTENER_CLASSIFY_RETRY"
    )
    fallback_models: Models = Field((), validation_alias="LISTENER_FALLBACK_MODELS")
    structured_output: Literal["auto", "on", "off"] = Field(
        "auto", validation_alias="LISTENER_STRUCTURED_OUTPUT"
    )
    evolution_api_url: str | None = Field(None, validation_alias="EVOLUTION_API_URL")
    evolution_api_key: SecretStr | None = Field(None, validation_alias="EVOLUTION_API_KEY")
    evolution_instance: str | None = Field(None, validation_alias="EVOLUTION_INSTANCE")
    llm: Literal["openrouter", "sandbox"] = Field("openrouter", validation_alias="LISTENER_LLM")
    sender: Literal["evolution", "sandbox"] = Field("evolution", validation_alias="LISTENER_SENDER")
    concurrency: int = Field(5, ge=1, le=1000, validation_alias="LISTENER_CONCURRENCY")
    retry_delays: Durations = Field(
        (timedelta(minutes=5), timedelta(minutes=15), timedelta(minutes=30)),
        validation_alias="LISTENER_RETRY_DELAYS",
    )
    part_delay: Milliseconds = Field(
        timedelta(milliseconds=1000), validation_alias="LISTENER_PART_DELAY_MS"
    )
    metrics_port: int = Field(9464, ge=0, le=65535, validation_alias="LISTENER_METRICS_PORT")
    max_parts: int = Field(5, ge=1, le=50, validation_alias="LISTENER_MAX_PARTS")

    # --- extras an operator may tune ---------------------------------------------------------
    max_part_chars: int = Field(1000, ge=50, le=65000, validation_alias="LISTENER_MAX_PART_CHARS")
    metrics_host: str = Field("0.0.0.0", validation_alias="LISTENER_METRICS_HOST")
    data_dir: Path = Field(Path(".listener"), validation_alias="LISTENER_DATA_DIR")
    worker_id: str = Field(
        default_factory=_default_worker_id, validation_alias="LISTENER_WORKER_ID"
    )
    debounce: Duration = Field(timedelta(milliseconds=10), validation_alias="LISTENER_DEBOUNCE")
    # At most the insert trigger's wake horizon: rows due beyond it send no NOTIFY, and this
    # poll is what arms the wake-up timer for them (campaign_messages_notify_insert.sql).
    poll_interval: Duration = Field(
        timedelta(seconds=30), le=timedelta(hours=1), validation_alias="LISTENER_POLL_INTERVAL"
    )
    claim_batch: int = Field(100, ge=1, le=10000, validation_alias="LISTENER_CLAIM_BATCH")
    # A hold of a whole campaign moves its due messages aside this many per statement.
    hold_batch: int = Field(1000, ge=1, le=100000, validation_alias="LISTENER_HOLD_BATCH")
    lease: Duration = Field(timedelta(seconds=30), validation_alias="LISTENER_LEASE")
    rescue_interval: Duration = Field(
        timedelta(seconds=10), validation_alias="LISTENER_RESCUE_INTERVAL"
    )
    sweep_interval: Duration = Field(
        timedelta(minutes=5), validation_alias="LISTENER_SWEEP_INTERVAL"
    )
    sweep_max_age: Duration = Field(timedelta(hours=24), validation_alias="LISTENER_SWEEP_MAX_AGE")
    shutdown_grace: Duration = Field(
        timedelta(seconds=20), validation_alias="LISTENER_SHUTDOWN_GRACE"
    )
    health_interval: Duration = Field(
        timedelta(seconds=5), validation_alias="LISTENER_HEALTH_INTERVAL"
    )
    quick_retries: int = Field(3, ge=0, le=20, validation_alias="LISTENER_QUICK_RETRIES")
    quick_retry_base: Duration = Field(
        timedelta(milliseconds=500), validation_alias="LISTENER_QUICK_RETRY_BASE"
    )
    quick_retry_max: Duration = Field(
        timedelta(seconds=8), validation_alias="LISTENER_QUICK_RETRY_MAX"
    )
    hold: Duration = Field(timedelta(seconds=60), validation_alias="LISTENER_HOLD")
    rate_limit_base: Duration = Field(
        timedelta(seconds=2), validation_alias="LISTENER_RATE_LIMIT_BASE"
    )
    connect_timeout: Duration = Field(
        timedelta(seconds=5), validation_alias="LISTENER_CONNECT_TIMEOUT"
    )
    llm_timeout: Duration = Field(timedelta(seconds=60), validation_alias="LISTENER_LLM_TIMEOUT")
    send_timeout: Duration = Field(timedelta(seconds=30), validation_alias="LISTENER_SEND_TIMEOUT")
    evolution_delay_ms: int = Field(
        0, ge=0, le=60000, validation_alias="LISTENER_EVOLUTION_DELAY_MS"
    )
    instance_check_ttl: Duration = Field(
        timedelta(seconds=30), validation_alias="LISTENER_INSTANCE_CHECK_TTL"
    )
    instance_recheck: Duration = Field(
        timedelta(seconds=60), validation_alias="LISTENER_INSTANCE_RECHECK"
    )
    # Sender pools: the daily cap of a warming number, day by day since warmup_started_on.
    warmup: Warmup = Field(DEFAULT_WARMUP, validation_alias="LISTENER_WARMUP")
    # Delivery feedback (Evolution webhooks): the receiver is on when the secret is set.
    webhook_secret: SecretStr | None = Field(None, validation_alias="LISTENER_WEBHOOK_SECRET")
    webhook_host: str = Field("0.0.0.0", validation_alias="LISTENER_WEBHOOK_HOST")
    webhook_port: int = Field(8788, ge=0, le=65535, validation_alias="LISTENER_WEBHOOK_PORT")
    opt_out_words: Annotated[tuple[str, ...], NoDecode] = Field(
        ("sair", "parar", "pare", "stop", "cancelar", "descadastrar", "remover"),
        validation_alias="LISTENER_OPT_OUT_WORDS",
    )
    restrict_errors: int = Field(3, ge=1, le=10, validation_alias="LISTENER_RESTRICT_ERRORS")
    pending_alarm: Duration = Field(
        timedelta(minutes=10), validation_alias="LISTENER_PENDING_ALARM"
    )
    restrict_hold: Duration = Field(timedelta(hours=6), validation_alias="LISTENER_RESTRICT_HOLD")
    default_region: str = Field(DEFAULT_REGION, validation_alias="LISTENER_DEFAULT_REGION")
    log_format: Literal["text", "json"] = Field("text", validation_alias="LISTENER_LOG_FORMAT")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="LISTENER_LOG_LEVEL"
    )

    @field_validator("log_level", "log_format", "llm", "sender", "structured_output", mode="before")
    @classmethod
    def _any_case(cls, value: Any, info: ValidationInfo) -> Any:
        # `debug` means DEBUG, `JSON` means json: the choice is a word, its case is noise.
        if not isinstance(value, str):
            return value
        text = value.strip()
        return text.upper() if info.field_name == "log_level" else text.lower()

    @field_validator("default_region", mode="before")
    @classmethod
    def _region(cls, value: Any) -> Any:
        # An ISO 3166 code phonenumbers knows (`BR`, `PT`): national numbers are read in it.
        if isinstance(value, str):
            code = value.strip().upper()
            if not valid_region(code):
                raise ValueError(f"{value!r} is not a region code phonenumbers knows (e.g. BR)")
            return code
        return value

    @field_validator("opt_out_words", mode="before")
    @classmethod
    def _words(cls, value: Any) -> Any:
        # A comma-separated list in the environment.
        if isinstance(value, str):
            return tuple(word.strip() for word in value.split(",") if word.strip())
        return value

    @property
    def webhooks_on(self) -> bool:
        """The receiver runs: a non-empty secret and a port."""
        secret = self.webhook_secret
        return bool(secret is not None and secret.get_secret_value().strip() and self.webhook_port)

    @model_validator(mode="after")
    def _providers_configured(self) -> Settings:
        key = self.openrouter_api_key
        if self.llm == "openrouter" and (key is None or not key.get_secret_value().strip()):
            raise ValueError(
                "OPENROUTER_API_KEY is required (or set LISTENER_LLM=sandbox for the built-in LLM)"
            )
        if self.sender == "evolution":
            missing = [
                name
                for name, value in (
                    ("EVOLUTION_API_URL", self.evolution_api_url),
                    ("EVOLUTION_API_KEY", self.evolution_api_key),
                    ("EVOLUTION_INSTANCE", self.evolution_instance),
                )
                if not _present(value)
            ]
            if missing:
                raise ValueError(
                    f"{', '.join(missing)} required (or set LISTENER_SENDER=sandbox "
                    "for the built-in sender)"
                )
        for name, value, least in (
            ("LISTENER_LEASE", self.lease, _LEAST_LEASE),
            ("LISTENER_POLL_INTERVAL", self.poll_interval, _LEAST_INTERVAL),
            ("LISTENER_RESCUE_INTERVAL", self.rescue_interval, _LEAST_INTERVAL),
            ("LISTENER_SWEEP_INTERVAL", self.sweep_interval, _LEAST_INTERVAL),
            ("LISTENER_HEALTH_INTERVAL", self.health_interval, _LEAST_INTERVAL),
            ("LISTENER_INSTANCE_RECHECK", self.instance_recheck, _LEAST_INTERVAL),
            ("LISTENER_CLASSIFY_INTERVAL", self.classify_interval, _LEAST_INTERVAL),
            ("LISTENER_CLASSIFY_RETRY", self.classify_retry, _LEAST_INTERVAL),
            ("LISTENER_HOLD", self.hold, _LEAST_INTERVAL),
            ("LISTENER_RATE_LIMIT_BASE", self.rate_limit_base, _LEAST_INTERVAL),
            ("LISTENER_CONNECT_TIMEOUT", self.connect_timeout, _LEAST_INTERVAL),
            ("LISTENER_LLM_TIMEOUT", self.llm_timeout, _LEAST_INTERVAL),
            ("LISTENER_SEND_TIMEOUT", self.send_timeout, _LEAST_INTERVAL),
        ):
            if value < least:
                shown = f"{format_duration(least)}, got {format_duration(value)}"
                raise ValueError(f"{name} must be at least {shown}")
        if not self.worker_id.strip():
            raise ValueError("LISTENER_WORKER_ID cannot be empty (leave it unset for a unique id)")
        for name, url, wanted in (
            ("OPENROUTER_BASE_URL", self.openrouter_base_url, self.llm == "openrouter"),
            ("EVOLUTION_API_URL", self.evolution_api_url, self.sender == "evolution"),
        ):
            if wanted and url and not _http_url(url):
                raise ValueError(f"{name} is not an http(s) URL: {url!r}")
        return self

    @property
    def max_attempts(self) -> int:
        """First try plus one per retry delay."""
        return len(self.retry_delays) + 1


# A lease shorter than this could expire between two renewals; intervals shorter than this
# are a typo (0 would spin).
_LEAST_LEASE = timedelta(seconds=1)
_LEAST_INTERVAL = timedelta(milliseconds=10)


def _present(value: str | SecretStr | None) -> bool:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    return bool(text and text.strip())


def _http_url(text: str) -> bool:
    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:  # e.g. an unclosed [ in the host
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment (and `overrides`), or raise ConfigurationError
    with one line naming the first bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(f"bad setting {_describe(exc)}") from None


def provider_free(**overrides: Any) -> Settings:
    """Settings with both sandbox providers, for commands that never call a provider."""
    base: dict[str, Any] = {"llm": "sandbox", "sender": "sandbox"}
    base.update(overrides)
    return load_settings(**base)
