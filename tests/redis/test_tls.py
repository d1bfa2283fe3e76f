"""``rediss://``: jobs run over TLS, certificates are checked, and TLS options in the URL
reach redis-py intact (or are refused early when they cannot work)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.exceptions
from redis.asyncio.connection import SSLConnection

import conveyor
from conveyor import JobState
from conveyor.backends import create_backend
from conveyor.backends.redis._client import make_client
from conveyor.backends.redis._url import RedisOptions
from tests.redis.cluster import cluster_node_port
from tests.redis.conftest import free_port


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(directory: Path) -> Certs:
    """A throw-away CA, and a server and a client certificate it signed (EC keys: fast)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=conveyor test CA", cwd=directory)  # fmt: skip
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=conveyor test {name}", cwd=directory)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
                 "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip
    return Certs(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


@dataclass(frozen=True)
class TLSServer:
    port: int
    certs: Certs

    def url(self, *, verify: bool = True, client_cert: bool = True, prefix: str = "tls") -> str:
        options = [f"prefix={prefix}"]
        if verify:
            options.append(f"ssl_ca_certs={quote(str(self.certs.ca))}")
        else:
            options.append("ssl_cert_reqs=none")
        if client_cert:
            options.append(f"ssl_certfile={quote(str(self.certs.client_cert))}")
            options.append(f"ssl_keyfile={quote(str(self.certs.client_key))}")
        return f"rediss://127.0.0.1:{self.port}/0?" + "&".join(options)


def _wait_for_tls(port: int, certs: Certs, process: subprocess.Popen[bytes], log: Path) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            reason = log.read_text(errors="replace") if log.exists() else ""
            if "tls" in reason.lower() or "ssl" in reason.lower():
                pytest.skip(
                    "!!! SKIPPED: this redis-server cannot serve TLS (built without it?): "
                    f"{reason.strip().splitlines()[-1] if reason.strip() else 'no log'} !!!"
                )
            raise RuntimeError(f"TLS redis-server exited: {reason}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("TLS redis-server did not start")


def _tls_tools() -> str:
    exe = shutil.which("redis-server")
    if exe is None or shutil.which("openssl") is None or shutil.which("redis-cli") is None:
        pytest.skip("!!! SKIPPED: needs the redis-server, redis-cli and openssl executables !!!")
    return exe


def start_tls_redis(
    directory: Path, certs: Certs, port: int, args: list[str]
) -> subprocess.Popen[bytes]:
    """A redis-server speaking TLS only (no plain-text port) that requires a client
    certificate signed by the test's CA; returns once it answers."""
    directory.mkdir(exist_ok=True)
    log = directory / "redis.log"
    process = subprocess.Popen(
        [
            _tls_tools(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--dir", str(directory), "--save", "", "--appendonly", "no",
            "--logfile", str(log),
            "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
            "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes", *args,
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_tls(port, certs, process, log)
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return process


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TLSServer]:
    _tls_tools()
    certs = make_certs(tmp_path)
    port = free_port()
    process = start_tls_redis(tmp_path / "server", certs, port, [])
    try:
        yield TLSServer(port, certs)
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_worker_runs_jobs_over_tls(tls_server: TLSServer) -> None:
    # The server has no plain-text port: every command below went over TLS.
    app = conveyor.App(tls_server.url())

    @app.task(name="double")
    def double(n: int) -> int:
        return 2 * n

    try:
        handles = [double.enqueue(i) for i in range(20)]
        conveyor.Worker(app, concurrency=4, handle_signals=False).run(burst=True)
        assert [h.wait(timeout=10) for h in handles] == [2 * i for i in range(20)]
        assert {h.info().state for h in handles} == {JobState.SUCCEEDED}
    finally:
        app.close()


async def test_ssl_cert_reqs_none_skips_checking_the_server(tls_server: TLSServer) -> None:
    backend = create_backend(tls_server.url(verify=False))
    await backend.open()
    try:
        assert await backend.stats() == []
    finally:
        await backend.close()


async def test_an_untrusted_server_certificate_is_refused(tls_server: TLSServer) -> None:
    # No ssl_ca_certs: the system's CAs do not know the test's CA.
    url = tls_server.url().replace(f"ssl_ca_certs={quote(str(tls_server.certs.ca))}&", "")
    backend = create_backend(url)
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)certificate"):
        await backend.open()
    await backend.close()


async def test_the_server_refuses_a_client_without_a_certificate(tls_server: TLSServer) -> None:
    backend = create_backend(tls_server.url(client_cert=False))
    with pytest.raises(redis.exceptions.ConnectionError):
        await backend.open()
    await backend.close()


def test_a_worker_runs_jobs_on_a_cluster_over_tls(tmp_path: Path) -> None:
    """``rediss://…?cluster=1``: the client, the nodes it discovers and the cluster bus
    all speak TLS (the nodes have no plain-text port)."""
    _tls_tools()
    certs = make_certs(tmp_path)
    ports = [cluster_node_port() for _ in range(3)]
    cli_tls = ["--tls", "--cacert", str(certs.ca), "--cert", str(certs.client_cert),
               "--key", str(certs.client_key)]  # fmt: skip
    processes = []
    try:
        for i, port in enumerate(ports):
            directory = tmp_path / f"node{i}"
            args = ["--cluster-enabled", "yes", "--tls-cluster", "yes",
                    "--cluster-config-file", str(directory / "nodes.conf")]  # fmt: skip
            processes.append(start_tls_redis(directory, certs, port, args))
        subprocess.run(
            ["redis-cli", *cli_tls, "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 20

        def state(port: int) -> str:
            cmd = ["redis-cli", *cli_tls, "-p", str(port), "cluster", "info"]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout

        while not all("cluster_state:ok" in state(p) for p in ports):
            assert time.monotonic() < deadline, "the TLS cluster never came up"
            time.sleep(0.05)

        server = TLSServer(ports[0], certs)
        # One store per node: `--cluster create` gives the nodes slots 0-5460,
        # 5461-10922 and 10923-16383, and these tags hash to 3845, 8096 and 16230.
        apps = [
            conveyor.App(server.url(prefix=prefix) + "&cluster=1")
            for prefix in ("tls-a", "tls-d", "tls-b")
        ]
        try:
            for app in apps:

                @app.task(name="double")
                def double(n: int) -> int:
                    return 2 * n

                handles = [double.enqueue(i) for i in range(10)]
                conveyor.Worker(app, concurrency=4, handle_signals=False).run(burst=True)
                assert [h.wait(timeout=10) for h in handles] == [2 * i for i in range(10)]
        finally:
            for app in apps:
                app.close()
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


# -- URL options reach redis-py (no server needed) ---------------------------------------


def test_tls_options_reach_the_connections() -> None:
    ca = "/etc/my certs/ca+bundle.pem"  # a space and a plus: both must survive encoding
    url = (
        f"rediss://:pw@example.com:6380/2?prefix=p&ssl_ca_certs={quote(ca)}"
        "&ssl_cert_reqs=REQUIRED&ssl_check_hostname=false&socket_connect_timeout=2.5"
    )
    options = RedisOptions.parse(url)
    assert (options.prefix, options.cluster) == ("p", False)
    kwargs = make_client(options).connection_pool.connection_kwargs
    assert make_client(options).connection_pool.connection_class is SSLConnection
    assert kwargs["ssl_ca_certs"] == ca
    assert kwargs["ssl_cert_reqs"] == "required"  # redis-py only knows the lower-case names
    assert kwargs["ssl_check_hostname"] is False
    assert kwargs["socket_connect_timeout"] == 2.5  # the URL wins over Conveyor's default
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "example.com",
        6380,
        2,
        "pw",
    )
    assert "prefix" not in kwargs


def test_tls_options_reach_the_cluster_client() -> None:
    url = "rediss://node1:7000?cluster=1&ssl_ca_certs=%2Ftmp%2Fca.pem&ssl_cert_reqs=optional"
    client = make_client(RedisOptions.parse(url))
    kwargs = client.connection_kwargs
    assert kwargs["connection_class"] is SSLConnection
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"]) == ("/tmp/ca.pem", "optional")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/0?ssl_ca_certs=/ca.pem", "only applies to TLS"),
        ("redis://h/0?ssl_cert_reqs=none", "write rediss://"),
        ("rediss://h/0?ssl_cert_reqs=never", "none, optional, required"),
    ],
)
def test_tls_mistakes_are_refused_at_once(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisOptions.parse(url)


def test_errors_do_not_show_the_password() -> None:
    with pytest.raises(ValueError, match="only applies to TLS") as error:
        RedisOptions.parse("redis://user:s3cret@h/0?ssl_ca_certs=/ca.pem")
    assert "s3cret" not in str(error.value)
    assert "user:***@h" in str(error.value)
