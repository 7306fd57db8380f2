"""
Tests for L{gateway.session.settings}: the session settings of a configuration.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from gateway.config import GatewayConfig
from gateway.session.settings import SessionSettings


def test_from_config_takes_every_session_setting() -> None:
    """
    L{SessionSettings.from_config} takes each session setting of the
    configuration, under the name the front door and the sessions use, and
    compiles the session key pattern to bytes.
    """
    config = dataclasses.replace(
        GatewayConfig(),
        sniff_timeout=0.5,
        connect_timeout=3.0,
        idle_timeout=60.0,
        fin_timeout=9.0,
        retries=1,
        proxy_protocol="v2",
        busy_message="busy",
        relay="copy",
        session_key=r"^LOGIN (\w+)",
        tcp_fast_path=False,
    )
    assert SessionSettings.from_config(config) == SessionSettings(
        sniff_timeout=0.5,
        connect_timeout=3.0,
        idle_timeout=60.0,
        fin_timeout=9.0,
        retries=1,
        proxy_version="v2",
        busy_message="busy",
        relay_mode="copy",
        session_key=re.compile(rb"^LOGIN (\w+)"),
        tcp_fast_path=False,
    )
    assert SessionSettings.from_config(GatewayConfig()).tcp_fast_path


def test_from_config_without_session_key() -> None:
    """
    Without a session key pattern, the settings have none.
    """
    assert SessionSettings.from_config(GatewayConfig()).session_key is None


def test_settings_are_frozen() -> None:
    """
    A settings value cannot be changed in place: a reload makes a new one.
    """
    settings = SessionSettings.from_config(GatewayConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.retries = 5  # type: ignore[misc]
