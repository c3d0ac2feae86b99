"""The ``--source`` registry (one row per log service) and the ``kafka://`` URL's options."""

from __future__ import annotations

from pathlib import Path

import pytest

from enumwatch.sources.collect.kafka import (
    PASSWORD_ENV,
    KafkaTarget,
    consumer_options,
    parse_source,
)
from enumwatch.sources.collect.source_registry import SCHEMES, SourceError, open_source, scheme_of


def test_every_scheme_is_one_row_and_says_where_its_position_lives() -> None:
    assert {name: (row.extra, row.checkpointed) for name, row in SCHEMES.items()} == {
        "cloudwatch": ("eks", True),
        "pubsub": ("gke", False),
        "azblob": ("aks", True),
        "kafka": ("kafka", False),
    }
    assert scheme_of("kafka://b:9092/t?group=g") is SCHEMES["kafka"]
    assert scheme_of("s3://bucket") is None


def test_an_unknown_scheme_lists_every_usage() -> None:
    with pytest.raises(SourceError) as info:
        open_source("s3://bucket/key", None)
    for row in SCHEMES.values():
        assert row.usage in str(info.value)


def test_a_checkpointed_source_needs_a_checkpoint() -> None:
    with pytest.raises(SourceError, match="needs --checkpoint"):
        open_source("azblob://account/insights-logs-kube-audit", None)


def test_kafka_url_with_every_option() -> None:
    url = ("kafka://ns.servicebus.windows.net:9093,b2:9093/insights-logs-kube-audit?group=enumwatch"
           "&security=sasl_ssl&mechanism=scram-sha-512&user=$ConnectionString"
           "&password_file=/s/pw&ca_file=/s/ca.crt&cert_file=/s/c.crt&key_file=/s/c.key"
           "&offset_reset=latest")
    assert parse_source(url) == KafkaTarget(
        bootstrap="ns.servicebus.windows.net:9093,b2:9093", topic="insights-logs-kube-audit",
        group="enumwatch", security="SASL_SSL", mechanism="SCRAM-SHA-512",
        user="$ConnectionString", password_file="/s/pw", ca_file="/s/ca.crt",
        cert_file="/s/c.crt", key_file="/s/c.key", offset_reset="latest",
    )


def test_kafka_url_defaults() -> None:
    assert parse_source("kafka://127.0.0.1:9092/audit?group=g") == KafkaTarget(
        bootstrap="127.0.0.1:9092", topic="audit", group="g"
    )
    target = parse_source("kafka://h:9093/audit?group=g&security=SASL_SSL&user=u")
    assert target.mechanism == "PLAIN"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://h:9092/audit", "consumer group is required"),
        ("kafka://h:9092/?group=g", "expected kafka://"),
        ("kafka:///audit?group=g", "expected kafka://"),
        ("kafka://h:9092/a/b?group=g", "expected kafka://"),
        ("kafka://h:9092/audit?group=g&password=hunter2", "unknown option(s) password"),
        ("kafka://h:9092/audit?group=g&security=TLS", "security=TLS is not one of"),
        ("kafka://h:9092/audit?group=g&security=SASL_SSL&user=u&mechanism=GSSAPI",
         "mechanism=GSSAPI is not one of"),
        ("kafka://h:9092/audit?group=g&security=SASL_SSL", "SASL needs user="),
        ("kafka://h:9092/audit?group=g&mechanism=PLAIN", "mechanism= needs security="),
        ("kafka://h:9092/audit?group=g&offset_reset=middle", "offset_reset=middle"),
    ],
)
def test_kafka_url_mistakes_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_source(url)
    assert message in str(info.value)


def test_the_sasl_password_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=k=\n")
    target = parse_source(f"kafka://h:9092/a?group=g&security=SASL_PLAINTEXT&user=$ConnectionString"
                          f"&password_file={secret}")
    options = consumer_options(target)
    assert (options["sasl_mechanism"], options["sasl_plain_username"],
            options["sasl_plain_password"]) == (
        "PLAIN", "$ConnectionString", "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=k="
    )
    assert "ssl_context" not in options
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    env_target = parse_source("kafka://h:9092/a?group=g&security=SASL_PLAINTEXT&user=u")
    assert consumer_options(env_target)["sasl_plain_password"] == "from-env"
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ValueError, match=PASSWORD_ENV):
        consumer_options(env_target)


def test_the_source_description_never_shows_the_query() -> None:
    from enumwatch.sources.collect.kafka import KafkaSource

    source = KafkaSource("kafka://h:9092/audit?group=g&security=SASL_SSL&user=u&ca_file=/x")
    assert source.description == "kafka://h:9092/audit"
