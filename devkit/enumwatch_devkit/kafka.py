"""A real Apache Kafka broker (KRaft mode) on 127.0.0.1, the way Azure Event Hubs' Kafka endpoint
is reached too.

``enumwatch collect --source kafka://...`` is tested against Apache's own broker, never a mock:
``hack/kafka/build.sh`` resolves ``org.apache.kafka:kafka_2.13`` and its dependencies from Maven
Central once into ``~/.cache/enumwatch/kafka-<version>/libs``, and :func:`start_kafka` runs it
with ``java`` as one combined broker+controller (KRaft, no ZooKeeper) on free ports:

* ``PLAINTEXT`` (the dev stack's ``KAFKA_BOOTSTRAP``, and what Vector/Fluent Bit/Filebeat point at
  in a lab);
* ``SASL_SSL`` with TLS from a CA minted here (:mod:`.pki`) and three mechanisms: ``PLAIN`` with
  the user literally named ``$ConnectionString`` whose password is an Event Hubs connection string
  (exactly how Event Hubs' Kafka endpoint authenticates, port 9093 there), and ``SCRAM-SHA-256``
  / ``SCRAM-SHA-512`` for one SCRAM user (created when the storage is formatted).

The broker is one process group, stopped by PID (:func:`~.processes.stop_group`), and ready when
its plaintext listener answers a Kafka ``ApiVersions`` request (a real protocol round trip, not an
open port).
"""

from __future__ import annotations

import base64
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from enumwatch_devkit.emulators import Emulator, EmulatorMissing
from enumwatch_devkit.pki import CertificateAuthority
from enumwatch_devkit.processes import free_port, launch
from enumwatch_devkit.repo import repo_root

#: The user Event Hubs' Kafka endpoint expects with SASL PLAIN, literally.
CONNECTION_STRING_USER = "$ConnectionString"
#: The password that user has here: a connection string in Event Hubs' own shape (not a secret:
#: the broker is local and the key is made up).
EVENT_HUBS_CONNECTION_STRING = (
    "Endpoint=sb://enumwatch-dev.servicebus.windows.net/;SharedAccessKeyName=enumwatch-listen;"
    "SharedAccessKey=ZGV2LWtleS1ub3QtYS1zZWNyZXQtZW51bXdhdGNoLWRldg=="
)
#: The SCRAM user (both SCRAM-SHA-256 and SCRAM-SHA-512 credentials).
SCRAM_USER = "enumwatch-scram"
SCRAM_PASSWORD = "scram-dev-password"
#: The broker's heap: the machine is small and shared, and the tests move kilobytes.
HEAP = "-Xmx384m"

_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


@dataclass
class KafkaBroker(Emulator):
    """A running broker: its listeners, the CA its TLS listener's certificate chains to, and the
    credentials it accepts. ``endpoint`` is the plaintext bootstrap (``127.0.0.1:PORT``)."""

    sasl_ssl: str = ""
    ca_file: Path = Path()

    @property
    def plaintext(self) -> str:
        """``HOST:PORT`` of the plaintext listener."""
        return self.endpoint


def kafka_libs() -> Path:
    """Resolve the broker's jars (once, into ~/.cache/enumwatch) and return their directory."""
    script = repo_root() / "hack" / "kafka" / "build.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if done.returncode == 3:
        raise EmulatorMissing(done.stderr.strip())
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding (Kafka's ``Uuid``), never
    starting with ``-`` (Kafka's own ``Uuid.randomUuid`` avoids those too: a command line would
    read one as an option)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _properties(workdir: Path, ports: dict[str, int], keystore: Path) -> str:
    plain_users = f"user_{CONNECTION_STRING_USER}={_jaas_quote(EVENT_HUBS_CONNECTION_STRING)}"
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{ports['controller']}",
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{ports['plaintext']},SASL_SSL://127.0.0.1:{ports['sasl_ssl']},"
            f"CONTROLLER://127.0.0.1:{ports['controller']}"
        ),
        "advertised.listeners": (
            f"PLAINTEXT://127.0.0.1:{ports['plaintext']},SASL_SSL://127.0.0.1:{ports['sasl_ssl']}"
        ),
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(workdir / "data"),
        "num.partitions": "2",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # A rebalance of a test's consumer group should not wait 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "listener.name.sasl_ssl.plain.sasl.jaas.config": (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
        ),
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
    }

    # java.util.Properties escapes: a backslash, and the separators ':' '=' in keys.
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\")

    return "".join(f"{key}={escape(value)}\n" for key, value in lines.items())


def _api_versions_answered(address: str) -> bool:
    """Whether the broker at ``HOST:PORT`` answers an ``ApiVersions`` v0 request."""
    host, _, port = address.rpartition(":")
    request = struct.pack(">hhih", 18, 0, 1, len("enumwatch-devkit")) + b"enumwatch-devkit"
    try:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            head = sock.recv(4)
            if len(head) < 4:
                return False
            size = struct.unpack(">i", head)[0]
            body = b""
            while len(body) < size:
                chunk = sock.recv(size - len(body))
                if not chunk:
                    return False
                body += chunk
            # correlation id 1, then error code 0 (NONE)
            return struct.unpack(">ih", body[:6]) == (1, 0)
    except OSError:
        return False


def start_kafka(workdir: Path, timeout: float = 120.0, *, detached: bool = False) -> KafkaBroker:
    """Format a KRaft log directory under ``workdir`` and start the broker on free ports.

    ``detached`` puts it in a session of its own so that it outlives this process (``dev-up``);
    otherwise it dies with it, like the tests' other servers."""
    libs = kafka_libs()
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("plaintext", "sasl_ssl", "controller")}
    pki = workdir / "pki"
    pki.mkdir(exist_ok=True)
    ca = CertificateAuthority.create(pki, common_name="enumwatch-kafka-ca")
    cert, key = ca.issue(pki, "broker", "127.0.0.1", names=("127.0.0.1", "localhost"), server=True)
    keystore = pki / "broker.pem"
    keystore.write_bytes(key.read_bytes() + cert.read_bytes())
    keystore.chmod(0o600)
    config = workdir / "server.properties"
    config.write_text(_properties(workdir, ports, keystore))
    log4j = workdir / "log4j2.properties"
    log4j.write_text(_LOG4J2)
    java = [
        "java",
        HEAP,
        "-Xss1m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{libs}/*",
    ]
    log_path = workdir / "kafka.log"
    scram = f"name={SCRAM_USER},password={SCRAM_PASSWORD}"
    formatted = subprocess.run(
        [
            *java,
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            f"--cluster-id={_cluster_id()}",
            "-c",
            str(config),
            "--add-scram",
            f"SCRAM-SHA-256=[{scram}]",
            "--add-scram",
            f"SCRAM-SHA-512=[{scram}]",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if formatted.returncode != 0:
        raise RuntimeError(
            f"kafka storage format failed ({formatted.returncode}):\n"
            f"{formatted.stdout[-2000:]}{formatted.stderr[-3000:]}"
        )
    die_with_parent = not detached
    proc = launch([*java, "kafka.Kafka", str(config)], log_path, die_with_parent=die_with_parent)
    broker = KafkaBroker(
        "kafka",
        f"127.0.0.1:{ports['plaintext']}",
        {"KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['plaintext']}"},
        proc,
        log_path,
        sasl_ssl=f"127.0.0.1:{ports['sasl_ssl']}",
        ca_file=ca.cert_file,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kafka exited {proc.returncode}:\n{broker.log()}")
        if _api_versions_answered(broker.plaintext):
            return broker
        time.sleep(0.3)
    broker.stop()
    raise RuntimeError(f"kafka not ready after {timeout}s:\n{broker.log()}")
