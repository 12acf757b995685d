"""Configuration models: frozen, ``extra="forbid"``, every default a named constant."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from taleus_bootstrap import DEFAULT_MAX_FRAME_BYTES, InviteeConfig, ManagerConfig
from taleus_bootstrap._config import (
    DEFAULT_AUDIT_LEVEL,
    DEFAULT_BREAKER_FAILURES,
    DEFAULT_BREAKER_OPEN,
    DEFAULT_BUSY_RETRY_AFTER,
    DEFAULT_CLEANUP_INTERVAL,
    DEFAULT_CLEANUP_TIMEOUT,
    DEFAULT_DIAL_ATTEMPTS,
    DEFAULT_DIAL_BACKOFF,
    DEFAULT_DIAL_BACKOFF_MAX,
    DEFAULT_DIAL_TIMEOUT,
    DEFAULT_GLOBAL_BURST,
    DEFAULT_GLOBAL_RATE_PER_S,
    DEFAULT_MAX_CONCURRENT_SESSIONS,
    DEFAULT_MAX_REFUSALS_IN_FLIGHT,
    DEFAULT_MAX_SESSION_HISTORY,
    DEFAULT_MAX_TRACKED_PEERS,
    DEFAULT_PEER_BURST,
    DEFAULT_PEER_RATE,
    DEFAULT_PEER_RATE_PERIOD,
    DEFAULT_PROVISION_TIMEOUT,
    DEFAULT_REFUSAL_SUMMARY_INTERVAL,
    DEFAULT_RELEASE_TIMEOUT,
    DEFAULT_RESOLVE_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_STEP_TIMEOUT,
)

COMMON_DEFAULTS: dict[str, Any] = {
    "session_timeout": DEFAULT_SESSION_TIMEOUT,
    "step_timeout": DEFAULT_STEP_TIMEOUT,
    "provision_timeout": DEFAULT_PROVISION_TIMEOUT,
    "cleanup_timeout": DEFAULT_CLEANUP_TIMEOUT,
    "release_timeout": DEFAULT_RELEASE_TIMEOUT,
    "max_frame_bytes": DEFAULT_MAX_FRAME_BYTES,
    "cadre_addrs": (),
    "audit_level": DEFAULT_AUDIT_LEVEL,
}
MANAGER_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "max_concurrent_sessions": DEFAULT_MAX_CONCURRENT_SESSIONS,
    "busy_retry_after_s": DEFAULT_BUSY_RETRY_AFTER,
    "breaker_failures": DEFAULT_BREAKER_FAILURES,
    "breaker_open_s": DEFAULT_BREAKER_OPEN,
    "peer_rate": DEFAULT_PEER_RATE,
    "peer_rate_period": DEFAULT_PEER_RATE_PERIOD,
    "peer_burst": DEFAULT_PEER_BURST,
    "global_rate_per_s": DEFAULT_GLOBAL_RATE_PER_S,
    "global_burst": DEFAULT_GLOBAL_BURST,
    "max_tracked_peers": DEFAULT_MAX_TRACKED_PEERS,
    "max_session_history": DEFAULT_MAX_SESSION_HISTORY,
    "cleanup_interval": DEFAULT_CLEANUP_INTERVAL,
    "shutdown_grace": DEFAULT_SHUTDOWN_GRACE,
    "max_refusals_in_flight": DEFAULT_MAX_REFUSALS_IN_FLIGHT,
    "refusal_summary_interval": DEFAULT_REFUSAL_SUMMARY_INTERVAL,
}
INVITEE_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "dial_timeout": DEFAULT_DIAL_TIMEOUT,
    "dial_attempts": DEFAULT_DIAL_ATTEMPTS,
    "dial_backoff": DEFAULT_DIAL_BACKOFF,
    "dial_backoff_max": DEFAULT_DIAL_BACKOFF_MAX,
    "resolve_timeout": DEFAULT_RESOLVE_TIMEOUT,
}
MODELS = [
    pytest.param(ManagerConfig, MANAGER_DEFAULTS, id="manager"),
    pytest.param(InviteeConfig, INVITEE_DEFAULTS, id="invitee"),
]


def float_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, field in model.model_fields.items() if field.annotation is float]


FLOAT_FIELDS = [
    pytest.param(model, name, id=f"{model.__name__}.{name}")
    for model in (ManagerConfig, InviteeConfig)
    for name in float_fields(model)
]
SECONDS_FIELDS = [
    "session_timeout",
    "step_timeout",
    "provision_timeout",
    "cleanup_timeout",
    "release_timeout",
]


def error_locs(exc: ValidationError) -> list[tuple[Any, ...]]:
    return [tuple(error["loc"]) for error in exc.errors()]


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(("model", "defaults"), MODELS)
def test_defaults_are_the_named_constants(model: type[BaseModel], defaults: dict[str, Any]) -> None:
    config = model()
    assert set(model.model_fields) == set(defaults), "every field has a named default"
    for name, expected in defaults.items():
        assert getattr(config, name) == expected, name


def test_default_values() -> None:
    # The documented numbers, so a change to a constant is a deliberate, visible act.
    assert DEFAULT_MAX_FRAME_BYTES == 16 * 1024
    assert DEFAULT_SESSION_TIMEOUT == 30.0
    assert DEFAULT_STEP_TIMEOUT <= DEFAULT_SESSION_TIMEOUT
    assert DEFAULT_PROVISION_TIMEOUT <= DEFAULT_SESSION_TIMEOUT


@pytest.mark.parametrize(("model", "defaults"), MODELS)
def test_defaults_round_trip_through_json(model: type[BaseModel], defaults: dict[str, Any]) -> None:
    config = model()
    assert model.model_validate_json(config.model_dump_json()) == config


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize(("model", "defaults"), MODELS)
def test_unknown_key_is_refused_by_name(model: type[BaseModel], defaults: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as exc_info:
        model(sesion_timeout=10.0)
    assert error_locs(exc_info.value) == [("sesion_timeout",)]
    assert exc_info.value.errors()[0]["type"] == "extra_forbidden"
    assert "sesion_timeout" in str(exc_info.value)


def test_manager_only_key_refused_by_invitee_config() -> None:
    with pytest.raises(ValidationError) as exc_info:
        InviteeConfig(max_concurrent_sessions=5)
    assert ("max_concurrent_sessions",) in error_locs(exc_info.value)
    with pytest.raises(ValidationError) as exc_info:
        ManagerConfig(dial_attempts=5)
    assert ("dial_attempts",) in error_locs(exc_info.value)


@pytest.mark.parametrize(("model", "defaults"), MODELS)
def test_frozen(model: type[BaseModel], defaults: dict[str, Any]) -> None:
    config = model()
    with pytest.raises(ValidationError):
        config.session_timeout = 1.0  # type: ignore[attr-defined]
    assert config.session_timeout == DEFAULT_SESSION_TIMEOUT  # type: ignore[attr-defined]
    assert hash(config) == hash(model())


# --------------------------------------------------------------------------- cross-checks


@pytest.mark.parametrize("model", [ManagerConfig, InviteeConfig])
@pytest.mark.parametrize("name", ["step_timeout", "provision_timeout"])
def test_step_longer_than_session_is_refused(model: type[BaseModel], name: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        model(session_timeout=10.0, **{name: 10.5})
    assert name in str(exc_info.value)
    equal = model(session_timeout=10.0, **{name: 10.0})
    assert getattr(equal, name) == 10.0


@pytest.mark.parametrize("model", [ManagerConfig, InviteeConfig])
def test_short_session_with_default_steps_is_refused(model: type[BaseModel]) -> None:
    with pytest.raises(ValidationError):
        model(session_timeout=DEFAULT_STEP_TIMEOUT / 2)
    config = model(session_timeout=2.0, step_timeout=1.0, provision_timeout=2.0)
    assert config.session_timeout == 2.0  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(("model", "name"), FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused(model: type[BaseModel], name: str, value: float) -> None:
    with pytest.raises(ValidationError) as exc_info:
        model(**{name: value})
    assert (name,) in error_locs(exc_info.value)


@pytest.mark.parametrize(("model", "name"), FLOAT_FIELDS)
def test_negative_floats_are_refused(model: type[BaseModel], name: str) -> None:
    with pytest.raises(ValidationError):
        model(**{name: -1.0})


@pytest.mark.parametrize("model", [ManagerConfig, InviteeConfig])
@pytest.mark.parametrize("name", SECONDS_FIELDS)
@pytest.mark.parametrize("value", [0, 0.0, 86_401.0])
def test_timeouts_must_be_positive_and_at_most_a_day(
    model: type[BaseModel], name: str, value: float
) -> None:
    with pytest.raises(ValidationError):
        model(**{name: value})


@pytest.mark.parametrize("model", [ManagerConfig, InviteeConfig])
def test_max_frame_bytes_bounds(model: type[BaseModel]) -> None:
    assert model(max_frame_bytes=256).max_frame_bytes == 256  # type: ignore[attr-defined]
    assert model(max_frame_bytes=1024 * 1024).max_frame_bytes == 1024 * 1024  # type: ignore[attr-defined]
    for bad in (0, 255, 1024 * 1024 + 1):
        with pytest.raises(ValidationError):
            model(max_frame_bytes=bad)


@pytest.mark.parametrize("model", [ManagerConfig, InviteeConfig])
def test_cadre_addrs_are_checked(model: type[BaseModel]) -> None:
    addrs = tuple(f"/ip4/10.0.0.{i}/tcp/4001" for i in range(16))
    assert model(cadre_addrs=addrs).cadre_addrs == addrs  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        model(cadre_addrs=(*addrs, "/ip4/10.0.1.1/tcp/1"))
    for bad in ("", "not a multiaddr", "/ip4/999.0.0.1/tcp/1"):
        with pytest.raises(ValidationError):
            model(cadre_addrs=(bad,))


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("max_concurrent_sessions", 0),
        ("max_concurrent_sessions", 100_001),
        ("peer_rate", 0),
        ("peer_burst", 0),
        ("global_burst", 0),
        ("global_rate_per_s", 0.0),
        ("max_tracked_peers", 0),
        ("max_session_history", -1),
        ("busy_retry_after_s", 3601.0),
        ("shutdown_grace", 3601.0),
    ],
)
def test_manager_bounds(name: str, bad: Any) -> None:
    with pytest.raises(ValidationError) as exc_info:
        ManagerConfig(**{name: bad})
    assert (name,) in error_locs(exc_info.value)


@pytest.mark.parametrize(
    ("name", "bad"),
    [("dial_attempts", 0), ("dial_attempts", 21), ("dial_backoff", 61.0), ("dial_timeout", 0.0)],
)
def test_invitee_bounds(name: str, bad: Any) -> None:
    with pytest.raises(ValidationError) as exc_info:
        InviteeConfig(**{name: bad})
    assert (name,) in error_locs(exc_info.value)


def test_zero_history_and_zero_grace_are_allowed() -> None:
    config = ManagerConfig(max_session_history=0, shutdown_grace=0.0, busy_retry_after_s=0.0)
    assert config.max_session_history == 0
    assert config.shutdown_grace == 0.0
