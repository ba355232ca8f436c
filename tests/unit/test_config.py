from __future__ import annotations

from pathlib import Path

import pytest
from kvs2.config import ServeSettings, kafka_config_from_env, parse_kafka_pairs
from kvs2.errors import ConfigError


def test_kafka_settings_from_env_and_pairs() -> None:
    env = {
        "KVS2_KAFKA_CONFIG": "linger.ms=5, compression.type=lz4",
        "KVS2_KAFKA_SASL_USERNAME": "alice",
        "KVS2_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "OTHER": "x",
    }
    assert kafka_config_from_env(env) == {
        "linger.ms": "5",
        "compression.type": "lz4",
        "sasl.username": "alice",
        "security.protocol": "SASL_PLAINTEXT",
    }


def test_bad_kafka_pair_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_kafka_pairs(["acks"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bootstrap_servers": ""}, "bootstrap-servers"),
        ({"topic": ""}, "--topic"),
        ({"listen": "50051"}, "HOST:PORT"),
        ({"snapshot_data_listen": "50052"}, "--snapshot-data-listen must be HOST:PORT or off"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, str], message: str) -> None:
    base: dict[str, object] = {"bootstrap_servers": "127.0.0.1:1", "topic": "t", "data_dir": Path("d")}
    base.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        ServeSettings(**base)  # type: ignore[arg-type]
