"""
Tests for named pools and routes in the configuration file
(L{gateway.poolconfig}, through L{gateway.configfile} and the options).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python.usage import UsageError

from gateway.checksummary import summary
from gateway.config import PoolSpec, RouteSpec
from tests.test_configfile import parse, write

GOOD = """
balance = "hash"
connect-timeout = 3

[pool.api]
balance = "leastconn"
health-path = "/healthz"
health-status = 204
connect-timeout = 2
retries = 1

[pool.eu]
proxy-protocol = "v2"
health-interval = 0

[[backend]]
endpoint = "tcp:127.0.0.1:7000"

[[backend]]
name = "api-1"
pool = "api"
endpoint = "tcp:127.0.0.1:8001"

[[backend]]
name = "eu-1"
pool = "eu"
endpoint = "tcp:127.0.0.1:7000"

[[route]]
name = "api"
host = "API.example.com"
path = "/v1"
pool = "api"
strip-prefix = true
max-body = 2048
timeout = 5
rate-per-ip = 2

[[route]]
path = "/assets"
root = "."
listing = true

[[route]]
path = "/play-eu"
bridge = "eu"
"""


def test_pools_and_routes_are_read(tmp_path: Path) -> None:
    """
    Named pools take their own settings (built-in defaults for the rest,
    not the game pool's top-level ones); routes their action and options;
    a relative root is relative to the file.
    """
    config = parse(["--config", write(tmp_path, GOOD)])
    assert config.pools == (
        PoolSpec(
            name="api",
            balance="leastconn",
            health_path="/healthz",
            health_status=204,
            connect_timeout=2.0,
            retries=1,
        ),
        PoolSpec(name="eu", proxy_protocol="v2", health_interval=0.0),
    )
    assert config.game_pool.balance == "hash" and config.game_pool.connect_timeout == 3.0
    assert [(b.name, b.pool) for b in config.backends] == [
        ("tcp:127.0.0.1:7000", "game"),
        ("api-1", "api"),
        ("eu-1", "eu"),
    ]
    assert config.routes == (
        RouteSpec(
            name="api",
            host="api.example.com",
            path="/v1",
            pool="api",
            strip_prefix=True,
            max_body=2048,
            timeout=5.0,
            rate_per_ip=2.0,
        ),
        RouteSpec(name="/assets", path="/assets", root=str(tmp_path), listing=True),
        RouteSpec(name="/play-eu", path="/play-eu", bridge="eu"),
    )


def test_check_config_lists_pools_and_routes(tmp_path: Path) -> None:
    """
    --check-config's line names every pool with its backends and every
    route with its action.
    """
    line = summary(parse(["--config", write(tmp_path, GOOD)]))
    assert (
        "pool api (leastconn, health GET /healthz -> 204 every 5 s, connect-timeout 2 s, "
        "retries 1): api-1 (tcp:127.0.0.1:8001, weight 1)"
    ) in line
    assert (
        "api: api.example.com /v1 -> HTTP proxy to pool api (prefix stripped, max-body 2048, "
        "timeout 5 s, rate-per-ip 2)"
    ) in line
    assert f"* /assets -> files in {tmp_path} (listing)" in line
    assert "* /play-eu -> WebSocket bridge to pool eu;" in line


def test_pool_game_table_gives_top_level_settings(tmp_path: Path) -> None:
    """
    [pool.game] may say the game pool's settings instead of the top level,
    but not both.
    """
    text = '[pool.game]\nbalance = "leastconn"\nretries = 0\n[[backend]]\nendpoint = "tcp:h:1"\n'
    config = parse(["--config", write(tmp_path, text)])
    assert (config.balance, config.retries) == ("leastconn", 0)
    with pytest.raises(UsageError, match=r"gateway.toml: pool.game.retries: also given as the"):
        parse(["--config", write(tmp_path, "retries = 1\n" + text)])
    with pytest.raises(UsageError, match=r"gateway.toml: pool.game.balance: expected one of"):
        parse(["--config", write(tmp_path, text.replace("leastconn", "fastest"))])


def test_command_line_backends_replace_only_the_game_pools(tmp_path: Path) -> None:
    """
    --backend replaces the file's game backends; the named pools keep theirs.
    """
    config = parse(["--config", write(tmp_path, GOOD), "--backend", "tcp:127.0.0.1:1"])
    assert [(b.name, b.pool) for b in config.backends] == [
        ("tcp:127.0.0.1:1", "game"),
        ("api-1", "api"),
        ("eu-1", "eu"),
    ]


BACKEND = '[[backend]]\nendpoint = "tcp:127.0.0.1:7000"\n'
API = '[pool.api]\n[[backend]]\nname = "a1"\npool = "api"\nendpoint = "tcp:127.0.0.1:8001"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BACKEND + '[[route]]\npath = "/api"\npool = "nope"\n',
            r"gateway.toml: route\[0\].pool: no pool 'nope' \(pools: game\)",
        ),
        (
            BACKEND + API + '[[route]]\npath = "/x"\npool = "api"\nroot = "."\n',
            r"route\[0\]: needs exactly one action: .*; got root and pool",
        ),
        (BACKEND + '[[route]]\npath = "/x"\n', r"route\[0\]: needs exactly one action.*got none"),
        (
            BACKEND + API + '[[route]]\nhost = "a.*.com"\npool = "api"\n',
            r"route\[0\].host: not a host name or \*.suffix pattern",
        ),
        (
            BACKEND + API + '[[route]]\nhost = "api.example.com:8080"\npool = "api"\n',
            r"route\[0\].host: not a host name",
        ),
        (BACKEND + API + '[[route]]\nhost = "*"\npool = "api"\n', r"route\[0\].host: not a host"),
        (
            BACKEND + API + '[[route]]\npath = "api"\npool = "api"\n',
            r"route\[0\].path: not a path prefix",
        ),
        (
            BACKEND + API + '[[route]]\npath = "/a?b"\npool = "api"\n',
            r"route\[0\].path: not a path prefix",
        ),
        (
            BACKEND + API + '[[route]]\nname = "x"\npath = "/a"\npool = "api"\n'
            '[[route]]\npath = "/a"\npool = "api"\n',
            r"route\[1\]: the same host \(any\) and path \(/a\) as route 'x'",
        ),
        (
            BACKEND + '[[route]]\npath = "/a"\nroot = "."\nstrip-prefix = true\n',
            r"route\[0\].strip-prefix: only for a route with pool =",
        ),
        (
            BACKEND + '[[route]]\npath = "/a"\nroot = "no-such-folder"\n',
            r"route\[0\].root: .*no-such-folder",
        ),
        (
            BACKEND + API + '[[route]]\npath = "/a"\npool = "api"\nmax-body = "big"\n',
            r"route\[0\].max-body: must be a whole number",
        ),
        (
            BACKEND + API + '[[route]]\npath = "/a"\npool = "api"\ncolour = 1\n',
            r"route\[0\]: unknown key 'colour' \(a route has: name, host, path",
        ),
        (
            BACKEND
            + API.replace("[pool.api]", '[pool.api]\nproxy-protocol = "v1"')
            + '[[route]]\npath = "/a"\npool = "api"\n',
            r"route\[0\].pool: pool 'api' sends a PROXY header",
        ),
        (
            BACKEND + '[[backend]]\nname = "a1"\npool = "api"\nendpoint = "tcp:h:1"\n',
            r"backend 'a1': pool 'api' has no \[pool.api\] table",
        ),
        (BACKEND + "[pool.api]\nretries = 1\n", r"gateway.toml: pool.api: has no backend"),
        (BACKEND + API.replace("[pool.api]", "[pool.Api]"), r"pool.Api: a pool's name is"),
        (
            BACKEND + API.replace("[pool.api]", '[pool.api]\nsession-key = "(x)"'),
            r"pool.api.session-key: needs balance = \"hash\"",
        ),
        (
            BACKEND + API.replace("[pool.api]", "[pool.api]\nhealth-status = 200"),
            r"pool.api.health-status: needs health-path \(an HTTP check\)",
        ),
        (
            BACKEND
            + API.replace("[pool.api]", '[pool.api]\nhealth-path = "/h"\nhealth-status = 99'),
            r"pool.api.health-status: an HTTP status \(100 to 599\), got '99'",
        ),
        (
            BACKEND
            + API.replace("[pool.api]", '[pool.api]\nhealth-path = "/h"\nhealth-host = "a b"'),
            r"pool.api.health-host: not a Host field value",
        ),
        (
            'websocket = ["/play"]\n'
            + BACKEND
            + API
            + '[[route]]\npath = "/play"\npool = "api"\n',
            r"route\[0\]: path /play is also a websocket path, whose bridge would take its",
        ),
        (
            BACKEND
            + API.replace('name = "a1"', 'name = "a1"\nproxy-protocol = "v2"')
            + '[[route]]\npath = "/a"\npool = "api"\n',
            r"route\[0\].pool: backend 'a1' of pool 'api' sends a PROXY header",
        ),
        (
            BACKEND + API + '[[route]]\npath = "/a"\npool = "api"\nstrip_prefix = true\n',
            r"unknown key 'strip_prefix' .*; did you mean 'strip-prefix'\?",
        ),
        (
            BACKEND + API + '[[route]]\npath = "/a"\npool = "api"\nwebsocket = ["/x"]\n',
            r"unknown key 'websocket' .*; websocket is a top-level setting: put it before",
        ),
        (
            BACKEND + '[[routes]]\npath = "/a"\nroot = "."\n',
            r"unknown setting 'routes' \(did you mean \[\[route\]\]\?\)",
        ),
        (
            BACKEND
            + API.replace("[pool.api]", '[pool.api]\nhealth-path = "/h"\nhealth-send = "x"'),
            r"pool.api.health-path: give it or health-send/health-expect, not both",
        ),
        (BACKEND + API.replace("[pool.api]", "[pool.api]\nweight = 2"), r"pool.api: unknown key"),
        ("pool = 3\n" + BACKEND, r"gateway.toml: pool: must be tables"),
        ('route = "x"\n' + BACKEND, r"gateway.toml: route: must be an array of tables"),
        (
            BACKEND + '[[backend]]\npool = "api"\nendpoint = "tcp:127.0.0.1:7000"\n[pool.api]\n',
            r"'tcp:127.0.0.1:7000' is also in pool 'game': give it a name of its own",
        ),
        (
            API + '[[backend]]\nname = "a1"\nendpoint = "tcp:h:2"\n',
            r"the name 'a1' is given twice",
        ),
    ],
)
def test_bad_pools_and_routes(tmp_path: Path, text: str, message: str) -> None:
    """
    Each mistake is refused with one line naming the file and the key.
    """
    with pytest.raises(UsageError, match=message) as raised:
        parse(["--config", write(tmp_path, text)])
    assert "\n" not in str(raised.value)
    assert "gateway.toml" in str(raised.value)
