"""--kafka-config: librdkafka client settings (security.protocol, sasl.*, ssl.*) for every
Kafka-using daemon, checked once at the command line and given to every client."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from evproto.daemons.options import parse_kafka_config


def test_pairs_and_a_properties_file_merge_and_the_pairs_win(tmp_path) -> None:
    f = tmp_path / "kafka.properties"
    f.write_text(
        "# for the production cluster\nsecurity.protocol=SASL_SSL\nsasl.mechanism = SCRAM-SHA-512\n\n"
        "sasl.username=central\n"
    )
    got = parse_kafka_config(("sasl.username=central-2", "ssl.ca.location=/etc/ev/ca.pem"), str(f))
    assert got == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "central-2",
        "ssl.ca.location": "/etc/ev/ca.pem",
    }


@pytest.mark.parametrize(
    "pair, says", [("nonsense", "KEY=VALUE"), ("Bad Key=1", "property name"), ("bootstrap.servers=x:1", "--kafka")]
)
def test_a_malformed_setting_names_the_problem_never_a_value(pair: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_kafka_config((pair,))


def _driver(*args: str, tmp_path=None) -> subprocess.CompletedProcess:
    extra: list[str] = []
    if tmp_path is not None:  # nothing to request: it starts, reaches Kafka, and is done
        (tmp_path / "none.txt").write_text("# nothing\n")
        extra = ["--requests", str(tmp_path / "none.txt"), "--state-dir", str(tmp_path / "state")]
    return subprocess.run(
        [sys.executable, "-m", "evproto.daemons.driver", "--id", "D1", "--insecure", "--exit-when-done", *extra, *args],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "EVPROTO_TOPIC_PREFIX": "kc."},
    )


def test_a_value_librdkafka_refuses_is_one_line_and_exit_2_with_no_secret_in_it() -> None:
    run = _driver(
        "--kafka", "127.0.0.1:1", "--kafka-config", "security.protocol=BOGUS", "--kafka-config", "sasl.password=hunter2"
    )
    assert run.returncode == 2 and 'configuration property "security.protocol"' in run.stderr
    assert "Traceback" not in run.stderr and "hunter2" not in run.stderr


def test_the_settings_reach_the_client(broker, tmp_path) -> None:
    """librdkafka's own debug output appears only when the setting asking for it reached it."""
    plain = _driver("--kafka", broker.bootstrap, "--log-level", "debug", tmp_path=tmp_path)
    assert plain.returncode == 0, plain.stderr
    told = _driver(
        "--kafka", broker.bootstrap, "--log-level", "debug", "--kafka-config", "debug=protocol", tmp_path=tmp_path
    )
    assert told.returncode == 0, told.stderr
    assert "Sent ApiVersionRequest" not in plain.stderr and "Sent ApiVersionRequest" in told.stderr
