"""The managed-cluster log services as real emulators, one per session, on 127.0.0.1.

Each fixture starts the provider's own emulator (``enumwatch_devkit.emulators``) on a free port,
sets the environment the provider's SDK reads to find it (``AWS_ENDPOINT_URL``,
``PUBSUB_EMULATOR_HOST``, ``AZURE_STORAGE_CONNECTION_STRING``) for the test process and its
subprocesses, and stops it by PID at the end. An emulator that is not installed (no gcloud, no
npm) skips its tests; ``make test`` (``ENUMWATCH_REQUIRE_INTEGRATION=1``) turns that skip into a
failure (tests/conftest.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enumwatch_devkit import emulators


def _emulator(
    start: Callable[[Path], emulators.Emulator], workdir: Path
) -> Iterator[emulators.Emulator]:
    try:
        emulator = start(workdir)
    except emulators.EmulatorMissing as exc:
        pytest.skip(str(exc))
    saved = {key: os.environ.get(key) for key in emulator.env}
    os.environ.update(emulator.env)
    try:
        yield emulator
    finally:
        emulator.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[emulators.Emulator]:
    """CloudWatch Logs (moto in server mode)."""
    yield from _emulator(emulators.start_moto, tmp_path_factory.mktemp("moto"))


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[emulators.Emulator]:
    """Google's Pub/Sub emulator."""
    yield from _emulator(emulators.start_pubsub, tmp_path_factory.mktemp("pubsub"))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[emulators.Emulator]:
    """Azurite's Blob service."""
    yield from _emulator(emulators.start_azurite, tmp_path_factory.mktemp("azurite"))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[emulators.Emulator]:
    """Apache Kafka (KRaft), once per session: plaintext and SASL_SSL (PLAIN, SCRAM)."""
    from enumwatch_devkit.kafka import start_kafka

    yield from _emulator(start_kafka, tmp_path_factory.mktemp("kafka"))
