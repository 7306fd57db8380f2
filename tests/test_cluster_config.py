"""
Tests for the cluster's settings (L{gateway.clusterconfig}): the C{--cluster}
URL, the password file, the names, timings and cap, their file keys, the
cross-checks, C{--check-config} and the password never shown.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.usage import UsageError

from gateway.checks import ConfigError
from gateway.checksummary import summary
from gateway.clusterconfig import default_node_name, parse_cluster_url
from gateway.config import ClusterSpec, GatewayConfig
from gateway.options import GatewayOptions
from gateway.process.reload import RESTART_ONLY
from tests.support import start_gateway
from tests.test_configfile import parse, write
from tests.test_reload import BASE as RELOAD_BASE
from tests.test_reload import gateway as reload_gateway
from tests.test_reload import lines as reload_lines

BACKEND = ["--backend", "tcp:127.0.0.1:7000"]
SECRET = "s3cr3t-Pa55"


def cluster(*argv: str) -> GatewayConfig:
    """
    The configuration of a gateway with one backend and C{argv}.
    """
    return parse([*BACKEND, *argv])


def test_no_cluster_by_default() -> None:
    """
    Without C{--cluster} there is no cluster, and the timings are the
    documented defaults.
    """
    config = cluster()
    defaults = GatewayConfig()
    assert config.cluster is None
    assert (
        config.cluster_ttl,
        config.cluster_timeout,
        config.affinity_ttl,
        config.cluster_max_sessions,
        config.cluster_required,
    ) == (15.0, 0.05, 3600.0, 0, False)
    assert (config.cluster_ttl, config.cluster_timeout, config.affinity_ttl) == (
        defaults.cluster_ttl,
        defaults.cluster_timeout,
        defaults.affinity_ttl,
    )


def test_defaults_with_a_url() -> None:
    """
    A plain URL: port 6379, DB 0, cluster C{gateway}, the node named by
    the host name and the first front's port.
    """
    config = cluster("--cluster", "redis://redis.internal", "--listen", "tcp:7777")
    host = socket.gethostname()
    assert config.cluster == ClusterSpec(
        scheme="redis", host="redis.internal", port=6379, db=0, name="gateway", node=f"{host}:7777"
    )
    assert config.cluster_password_file is None


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        (
            "redis://10.0.0.5:6380/3",
            {"scheme": "redis", "host": "10.0.0.5", "port": 6380, "db": 3},
        ),
        (
            "rediss://gw:p%40ss%3Aword@Redis.Example:7000",
            {
                "scheme": "rediss",
                "host": "redis.example",
                "port": 7000,
                "db": 0,
                "username": "gw",
                "password": "p@ss:word",
            },
        ),
        ("redis://:pw@[::1]/15", {"host": "::1", "db": 15, "password": "pw"}),
        ("redis://h?db=4", {"host": "h", "db": 4}),
        ("unix:///run/redis/redis.sock", {"scheme": "unix", "path": "/run/redis/redis.sock"}),
        ("unix:///run/redis.sock?db=2", {"scheme": "unix", "path": "/run/redis.sock", "db": 2}),
        ("unix://:pw@/run/redis.sock", {"scheme": "unix", "password": "pw"}),
        ("/run/redis.sock", {"scheme": "unix", "path": "/run/redis.sock", "db": 0}),
    ],
)
def test_good_urls(text: str, fields: dict[str, object]) -> None:
    """
    Each form of URL gives the fields it says.
    """
    parsed = parse_cluster_url("--cluster", text)
    assert {key: parsed.get(key) for key in fields} == fields


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bad://x", "--cluster: unknown scheme 'bad': expected redis://"),
        ("http://h", "--cluster: unknown scheme 'http'"),
        ("redis.sock", "(a UNIX socket path must be absolute)"),
        ("localhost:6379", "did you mean redis://localhost:6379?"),
        ("redis://", "--cluster: the URL has no host"),
        ("redis://:6379/0", "--cluster: the URL has no host"),
        ("redis://h:0", "--cluster: the port must be 1 to 65535, got 0"),
        ("redis://h:65536", "--cluster: the port must be 1 to 65535, got 65536"),
        ("redis://h:port", "--cluster: the port must be a number, 1 to 65535"),
        ("redis://h/16", "--cluster: the DB must be 0 to 15, Redis' default databases, got '16'"),
        ("redis://h/-1", "--cluster: the DB must be 0 to 15"),
        ("redis://h/x", "--cluster: the DB must be 0 to 15"),
        ("redis://h/1?db=1", "--cluster: the DB is given twice"),
        ("redis://h?timeout=1", "--cluster: unknown query key 'timeout' (only db=N)"),
        ("unix:///r.sock?password=x", "--cluster: unknown query key 'password'"),
        ("unix://run/redis.sock", "--cluster: unix:// takes an absolute path"),
        ("redis://h#frag", "--cluster: a URL fragment"),
        ("redis://[::1", "--cluster: not a valid URL"),
        ("redis://[nothost]:1", "--cluster: not a valid URL"),
        ("redis://bad host", "--cluster: not a host name or address"),
        ("redis://u:\x07@h", "--cluster: the password must be non-empty text without control"),
    ],
)
def test_bad_urls(text: str, message: str) -> None:
    """
    Every bad URL is one line naming the option and what is wrong.
    """
    with pytest.raises(UsageError) as raised:
        cluster("--cluster", text)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        f"redis://:{SECRET}",  # the '@' forgotten: the password reads as a port
        f"redis://user:{SECRET}",
        f"redis://:ab/{SECRET}@h",  # a '/' in the password, not encoded
        f"redis://:ab?{SECRET}=1@h",
        f"redis://:ab#{SECRET}@h",
        f"redis://:{SECRET}@h:0",
        f"redis://:{SECRET}@h/99",
        f"bad://:{SECRET}@h",
        f"redis://:{SECRET}\x00@h",
    ],
)
def test_bad_urls_never_show_the_password(text: str) -> None:
    """
    A bad URL's message does not show the password, even when the URL is
    malformed around it.
    """
    with pytest.raises(UsageError) as raised:
        cluster("--cluster", text)
    assert SECRET not in str(raised.value)


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_HOSTS = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.ip_addresses().map(str),
)
_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30)


@given(
    host=_HOSTS,
    port=st.integers(1, 65535),
    db=st.integers(0, 15),
    username=st.none() | _TEXT,
    password=_TEXT,
    tls=st.booleans(),
)
def test_urls_round_trip(
    host: str, port: int, db: int, username: str | None, password: str, tls: bool
) -> None:
    """
    Any host, port, DB, user name and password, written into a URL with
    C{urllib.parse.quote}, come back as they were; the password is in
    neither C{str(spec)}, nor the summary, nor a sibling option's error.
    """
    shown_host = f"[{host}]" if ":" in host else host
    user = quote(username, safe="") if username is not None else ""
    scheme = "rediss" if tls else "redis"
    url = f"{scheme}://{user}:{quote(password, safe='')}@{shown_host}:{port}/{db}"
    config = cluster("--cluster", url, "--node-name", "n1")
    assert config.cluster == ClusterSpec(
        scheme=scheme, host=host, port=port, db=db, username=username, name="gateway", node="n1"
    )
    assert config.cluster.password == password
    # Shown the same whatever the password: it is not in what is shown.
    other = dataclasses.replace(config.cluster, password="other")
    assert str(config.cluster) == str(other)
    assert summary(config) == summary(dataclasses.replace(config, cluster=other))
    assert "***@" in summary(config)
    with pytest.raises(UsageError) as raised:
        cluster("--cluster", url, "--cluster-ttl", "-1")
    assert str(raised.value) == "--cluster-ttl: must not be negative, got '-1'"


def test_repr_and_summary_hide_the_password() -> None:
    """
    The spec's repr, the config's and C{--check-config}'s summary show the
    URL with C{***} for its password.
    """
    config = cluster("--cluster", f"redis://gw:{SECRET}@10.0.0.5:6380/2", "--node-name", "eu-1")
    assert SECRET not in repr(config)
    assert SECRET not in summary(config)
    assert summary(config).endswith(
        "; cluster redis://gw:***@10.0.0.5:6380/2 (name gateway, node eu-1, ttl 15 s, "
        "timeout 0.05 s, affinity-ttl 3600 s, max-sessions none, required no)"
    )


def _password_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    """
    A password file with C{text}, made C{mode}; its path.
    """
    path = tmp_path / "redis-password"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_password_file(tmp_path: Path) -> None:
    """
    The password is the file's first line without its line end (spaces
    kept); C{--check-config} names the file, not the password.
    """
    path = _password_file(tmp_path, f" {SECRET}\r\nsecond line\n")
    config = cluster("--cluster", "redis://gw@h", "--cluster-password-file", path)
    assert config.cluster is not None
    assert (config.cluster.username, config.cluster.password) == ("gw", f" {SECRET}")
    assert config.cluster_password_file == path
    assert SECRET not in summary(config)
    assert "redis://gw:***@h:6379/0 (" in summary(config)
    assert summary(config).endswith(f", password from {path})")


def test_password_file_readable_by_others_is_a_warning(tmp_path: Path) -> None:
    """
    A password file that group or others may read is accepted with a
    warning in the log and in C{--check-config}'s summary.
    """
    path = _password_file(tmp_path, SECRET, 0o644)
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        config = cluster("--cluster", "redis://h", "--cluster-password-file", path)
    finally:
        globalLogPublisher.removeObserver(events)
    warned = [e for e in events if e.get("log_level") == LogLevel.warn]
    assert [e["option"] for e in warned] == ["--cluster-password-file"]
    assert f"chmod 0600 {path}" in str(warned[0]["warning"])
    assert f"(warning: {path} may be read by others" in summary(config)
    assert "warning" not in summary(
        cluster("--cluster", "redis://h", "--cluster-password-file", _password_file(tmp_path, "x"))
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the first line (the password) is empty"),
        ("\nsecond", "the first line (the password) is empty"),
        ("x" * 5000, "the first line is over 4096 characters"),
        ("a\x00b\n", "the password must be non-empty text without control characters"),
    ],
)
def test_bad_password_files(tmp_path: Path, text: str, message: str) -> None:
    """
    An empty first line, a huge one or one with control characters is
    refused, naming the file.
    """
    path = _password_file(tmp_path, text)
    with pytest.raises(UsageError) as raised:
        cluster("--cluster", "redis://h", "--cluster-password-file", path)
    assert str(raised.value).startswith("--cluster-password-file")
    assert message in str(raised.value)


def test_missing_password_file(tmp_path: Path) -> None:
    """
    A password file that does not exist is refused.
    """
    with pytest.raises(UsageError) as raised:
        cluster("--cluster", "redis://h", "--cluster-password-file", str(tmp_path / "none"))
    assert str(raised.value) == (
        f"--cluster-password-file: cannot read {str(tmp_path / 'none')!r}: "
        "No such file or directory"
    )


def test_password_in_the_url_and_a_file(tmp_path: Path) -> None:
    """
    A password given twice (in the URL and the file) is refused, without
    showing it.
    """
    path = _password_file(tmp_path, "other")
    with pytest.raises(UsageError) as raised:
        cluster("--cluster", f"redis://:{SECRET}@h", "--cluster-password-file", path)
    assert str(raised.value) == (
        "--cluster-password-file: the --cluster URL has a password already: give it in one "
        "place (the file is better)"
    )


def test_password_file_unreadable_after_the_privilege_drop(tmp_path: Path) -> None:
    """
    A reload that may no longer read the password file (twistd C{-u})
    keeps the password read at start while the file is the same.
    """
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = _password_file(tmp_path, SECRET)
    options = GatewayOptions(reactor=MemoryReactor())
    options.parseOptions([*BACKEND, "--cluster", "redis://h", "--cluster-password-file", path])
    os.chmod(path, 0)
    assert options.rebuild_now().cluster == options.config.cluster
    assert options.rebuild_now().cluster.password == SECRET  # type: ignore[union-attr]
    Path(path).unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        options.rebuild_now()


def test_names_and_timings() -> None:
    """
    The names, the TTL (with units) and the flag are carried as given.
    """
    config = cluster(
        *("--cluster", "redis://h", "--node-name", "eu-1.a:9", "--cluster-name", "prod_2"),
        *("--cluster-ttl", "30s", "--cluster-required"),
    )
    assert config.cluster is not None
    assert (config.cluster.node, config.cluster.name) == ("eu-1.a:9", "prod_2")
    assert config.cluster_ttl == 30.0
    assert config.cluster_required is True
    assert "required yes)" in summary(config)


def test_cluster_max_sessions_is_taken() -> None:
    """
    C{--cluster-max-sessions} (the cluster's cap on game sessions) is read.
    """
    assert (
        cluster("--cluster", "redis://h", "--cluster-max-sessions", "5000").cluster_max_sessions
        == 5000
    )
    assert cluster("--cluster", "redis://h").cluster_max_sessions == 0


def test_cluster_timeout_is_taken() -> None:
    """
    C{--cluster-timeout} (the shared limits' wait) is read with its unit.
    """
    assert cluster("--cluster", "redis://h", "--cluster-timeout", "20ms").cluster_timeout == 0.02
    assert cluster("--cluster", "redis://h").cluster_timeout == 0.05


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--node-name", ""], "--node-name: 1 to 64 characters of A-Z a-z 0-9 . _ : -, got ''"),
        (["--node-name", "a b"], "--node-name: 1 to 64 characters"),
        (["--node-name", "x" * 65], "--node-name: 1 to 64 characters"),
        (["--cluster-name", "gw/1"], "--cluster-name: 1 to 64 characters"),
        (["--cluster-ttl", "0"], "--cluster-ttl: must be more than 0 seconds, got '0'"),
        (["--cluster-ttl", "0.05"], "--cluster-ttl: must be at least 0.1 seconds"),
        (["--cluster-ttl", "2d"], "--cluster-ttl: must be at most 86400 seconds (a day)"),
        (["--cluster-ttl", "nan"], "--cluster-ttl: expected a finite number"),
        (["--cluster-ttl", "soon"], "--cluster-ttl: expected a number of seconds"),
        (["--cluster-timeout", "0"], "--cluster-timeout: must be 0.001 to 15 seconds, got '0'"),
        (["--cluster-timeout", "1e-300"], "--cluster-timeout: must be 0.001 to 15 seconds"),
        (["--cluster-timeout", "inf"], "--cluster-timeout: expected a finite number"),
        (
            ["--cluster-timeout", "5"],
            "--cluster-timeout: must be below a third of --cluster-ttl (5 s: the heartbeat), "
            "got 5",
        ),
        (
            ["--cluster-ttl", "1", "--cluster-timeout", "0.4"],
            "--cluster-timeout: must be below a third of --cluster-ttl",
        ),
        (
            ["--affinity-ttl", "0.05"],
            "--affinity-ttl: must be 0 (not shared) or 0.1 to 2.592e+06 seconds, got '0.05'",
        ),
        (["--affinity-ttl", "31d"], "--affinity-ttl: must be 0 (not shared) or 0.1 to"),
        (["--affinity-ttl", "-1"], "--affinity-ttl: must be 0 (not shared) or 0.1 to"),
        (["--affinity-ttl", "later"], "--affinity-ttl: expected a number of seconds"),
        (["--cluster-max-sessions", "-1"], "--cluster-max-sessions: must not be negative"),
    ],
)
def test_bad_options(argv: list[str], message: str) -> None:
    """
    Each bad cluster option is one line naming it.
    """
    with pytest.raises(UsageError) as raised:
        cluster("--cluster", f"redis://:{SECRET}@h", *argv)
    assert str(raised.value).startswith(message)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["--node-name", "n"],
        ["--cluster-name", "c"],
        ["--cluster-ttl", "15"],
        ["--cluster-timeout", "1"],
        ["--affinity-ttl", "1"],
        ["--cluster-max-sessions", "0"],
        ["--cluster-required"],
        ["--cluster-password-file", "/etc/passwd"],
    ],
)
def test_cluster_options_need_a_cluster(argv: list[str]) -> None:
    """
    Any other cluster option without C{--cluster} is refused, naming both.
    """
    with pytest.raises(UsageError) as raised:
        cluster(*argv)
    assert str(raised.value) == f"{argv[0]}: needs --cluster (a Redis URL)"


@pytest.mark.parametrize(
    ("text", "seconds"), [("2d", 172800.0), ("0", 0.0), ("0.1", 0.1), ("30d", 2592000.0)]
)
def test_affinity_ttl(text: str, seconds: float) -> None:
    """
    C{--affinity-ttl} takes a duration with its unit, 0 turning the shared
    affinity off; C{--check-config} shows it.
    """
    config = cluster("--cluster", "redis://h", "--affinity-ttl", text)
    assert config.affinity_ttl == seconds
    assert f"affinity-ttl {seconds:g} s" in summary(config)


def test_affinity_ttl_in_toml(tmp_path: Path) -> None:
    """
    The configuration file's C{affinity-ttl} (a number or a duration text)
    is the option's; the command line wins over it.
    """
    path = write(tmp_path, 'cluster = "redis://h"\naffinity-ttl = "10m"\n')
    assert parse([*BACKEND, "--config", str(path)]).affinity_ttl == 600.0
    path = write(tmp_path, 'cluster = "redis://h"\naffinity-ttl = 0\n')
    assert parse([*BACKEND, "--config", str(path)]).affinity_ttl == 0.0
    assert parse([*BACKEND, "--config", str(path), "--affinity-ttl", "5"]).affinity_ttl == 5.0


def test_affinity_ttl_needs_a_restart(log_events: EventLoggingObserver) -> None:
    """
    A reload keeps the running C{--affinity-ttl} (the node's shared
    affinity is made at start, on or off), says so, and applies the rest.
    """
    service, source, _ = reload_gateway()
    source.next = dataclasses.replace(RELOAD_BASE, affinity_ttl=5.0, max_per_ip=7)
    service.reload()
    assert service.config.affinity_ttl == RELOAD_BASE.affinity_ttl
    assert service.config.max_per_ip == 7
    assert any(
        "affinity_ttl changed, which needs a restart: kept as it was" in line
        for line in reload_lines(log_events)
    )


def test_workers_are_members() -> None:
    """
    C{--cluster} with worker processes is allowed: each is a member.
    """
    config = cluster("--cluster", "redis://h", "--workers", "4")
    assert (config.workers, config.cluster is not None) == (4, True)


def test_default_node_names() -> None:
    """
    The default node name is the host name and the first front's port,
    whatever the kind of front; the host name alone without a port.
    """
    assert default_node_name(("tcp:8080:interface=127.0.0.1",), "vm") == "vm:8080"
    assert default_node_name(("haproxy:tcp:7000", "tcp:1"), "vm") == "vm:7000"
    assert default_node_name(("tls:/etc/certs:port=443",), "vm") == "vm:443"
    assert default_node_name(("tcp6:port=9000",), "vm") == "vm:9000"
    assert default_node_name(("unix:/run/gw.sock",), "vm") == "vm"
    assert default_node_name(("tcp:80",), "my host!") == "my-host-:80"
    assert default_node_name(("tcp:80",), "h" * 80) == "h" * 61 + ":80"


def test_file_keys(tmp_path: Path) -> None:
    """
    Every cluster option is a file key; a relative password file is
    relative to the file's folder; the command line wins.
    """
    _password_file(tmp_path, SECRET)
    path = write(
        tmp_path,
        """
cluster = "rediss://gw@redis.internal:6380/1"
cluster-password-file = "redis-password"
node-name = "eu-1"
cluster-name = "prod"
cluster-ttl = "1m"
cluster-required = true
backend = ["tcp:127.0.0.1:7000"]
""",
    )
    config = parse(["--config", path, "--node-name", "eu-2"])
    assert config.cluster == ClusterSpec(
        scheme="rediss",
        host="redis.internal",
        port=6380,
        db=1,
        username="gw",
        name="prod",
        node="eu-2",
    )
    assert config.cluster.password == SECRET
    assert config.cluster_password_file == str(tmp_path / "redis-password")
    assert (config.cluster_ttl, config.cluster_required) == (60, True)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    """
    A bad value in the file names the file and the key.
    """
    path = write(tmp_path, 'cluster = "redis://h/20"\nbackend = ["tcp:127.0.0.1:7000"]\n')
    with pytest.raises(UsageError) as raised:
        parse(["--config", path])
    assert str(raised.value).startswith(f"{path}: cluster: the DB must be 0 to 15")
    path = write(tmp_path, 'node-name = "n"\nbackend = ["tcp:127.0.0.1:7000"]\n')
    with pytest.raises(UsageError) as raised:
        parse(["--config", path])
    assert str(raised.value) == f"{path}: node-name: needs cluster (a Redis URL)"


def test_reload_keeps_where_and_who() -> None:
    """
    The cluster's Redis and names need a restart; a changed password alone
    is no such change (the spec compares without it).
    """
    assert "cluster" in RESTART_ONLY
    one = ClusterSpec(scheme="redis", host="h", name="g", node="n", password="a")
    assert one == ClusterSpec(scheme="redis", host="h", name="g", node="n", password="b")
    assert one != ClusterSpec(scheme="redis", host="h", name="g", node="m", password="a")


def test_a_bad_url_stops_twistd(tmp_path: Path) -> None:
    """
    twistd -n gateway with a bad URL exits with status 2 and one line on
    standard error, before it listens.
    """
    result = start_gateway(tmp_path, "--backend", "tcp:127.0.0.1:7000", "--cluster", "bad://x")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "gateway: error: --cluster: unknown scheme 'bad': expected redis://HOST[:PORT][/DB], "
        "rediss:// (TLS) or unix:///PATH (or an absolute path) (see: twistd gateway --help)\n"
    )
    assert "listening on" not in result.stdout
