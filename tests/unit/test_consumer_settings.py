"""The replica's consumer settings (issue 12 item 3): the operator's `--kafka-config` fetch and queue sizes
take effect, while the settings a replica's correctness rests on cannot be changed.

Before, `ChangelogReader` put its own fetch and queue tuning after the user's settings, so a user lowering
`queued.max.messages.kbytes` to bound a replica's memory was silently ignored.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvs2 import kafka_io
from kvs2.config import check_kafka_config
from kvs2.errors import ConfigError
from kvs2.kafka_io import ChangelogReader


class _Captured:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def close(self) -> None:
        pass


def _settings_of(monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]) -> dict[str, Any]:
    made: list[_Captured] = []

    def consumer(settings: dict[str, Any]) -> _Captured:
        made.append(_Captured(settings))
        return made[-1]

    monkeypatch.setattr(kafka_io, "Consumer", consumer)
    ChangelogReader(config, "t")
    return made[0].settings


TUNING = {
    "queued.max.messages.kbytes": "1024",
    "queued.min.messages": "500",
    "fetch.max.bytes": "2000000",
    "max.partition.fetch.bytes": "300000",
    "fetch.wait.max.ms": "7",
    "fetch.queue.backoff.ms": "3",
    "socket.nagle.disable": "false",
}


def test_the_users_fetch_and_queue_sizes_win_over_the_readers_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings_of(monkeypatch, dict(TUNING))
    assert {name: settings[name] for name in TUNING} == TUNING


def test_the_reader_has_bounded_defaults_when_the_user_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_of(monkeypatch, {})
    # The prefetch queue is what a replica's memory is made of after catch-up (issue 12: 256 MiB before).
    assert int(settings["queued.max.messages.kbytes"]) <= 65536
    assert int(settings["fetch.max.bytes"]) <= 64 << 20


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("isolation.level", "read_uncommitted"),
        ("enable.partition.eof", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.auto.commit", "true"),
        ("group.id", "mine"),
    ],
)
def test_settings_replay_correctness_rests_on_are_refused_and_never_applied(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        check_kafka_config({name: value})
    # Even if a caller skipped the check (an embedded replica builds its own settings), the reader keeps them.
    assert _settings_of(monkeypatch, {name: value})[name] != value
