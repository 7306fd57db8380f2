"""
The dashboard's cluster panel in a real headless browser (Debian's
C{chromium}, as in L{tests.test_dashboard_browser}): an admin endpoint in
this process whose state has a cluster member (L{tests.clusterview}: the
nodes and Redis' state a L{gateway.cluster.node.ClusterNode} would report,
no Redis needed), and one without.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.threads import deferToThread

from gateway.ops.admin import make_admin_site
from gateway.ops.registry import Counters, SessionRegistry
from gateway.ops.status import AdminState, ClusterMember
from gateway.pool.backends import Backend, Pool
from gateway.pool.pools import Pools
from tests.clusterview import ClusterView, three_nodes
from tests.test_dashboard_browser import _Cells, dump_dom
from tests.test_dashboard_browser import pytestmark as pytestmark


class _Attributes(HTMLParser):
    """
    The attributes of the elements that have an id, and the classes of the
    rows and cells of the cluster's nodes table.

    @ivar by_id: attributes by element id.
    @ivar node_rows: each row of C{#cluster-nodes}' body: its class and its
        cells' classes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.node_rows: list[tuple[str, list[str]]] = []
        self._table: str | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        ident = found.get("id")
        if ident:
            self.by_id[ident] = found
        if tag == "table":
            self._table = ident
        elif tag == "tbody":
            self._in_body = True
        elif self._table == "cluster-nodes" and self._in_body and tag == "tr":
            self.node_rows.append((found.get("class") or "", []))
        elif self._table == "cluster-nodes" and tag == "td" and self.node_rows:
            self.node_rows[-1][1].append(found.get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "tbody":
            self._in_body = False


def page_of(url: str, profile: Path) -> tuple[_Cells, _Attributes]:
    """
    The dashboard at C{url} as a browser renders it: its texts and tables,
    and its elements' attributes.
    """
    html = dump_dom(url, profile)
    cells, attributes = _Cells(), _Attributes()
    cells.feed(html)
    attributes.feed(html)
    return cells, attributes


@asynccontextmanager
async def admin_of(cluster: ClusterMember | None) -> AsyncIterator[str]:
    """
    An admin endpoint on loopback, in this process, with one backend and
    C{cluster} as the node's membership.

    @return: its URL.
    """
    clock: IReactorTime = reactor
    pool = Pool([Backend(name="game-1", description="tcp:127.0.0.1:7000", endpoint=None)])  # type: ignore[arg-type]
    registry = SessionRegistry(clock)
    state = AdminState(Pools(pool), registry, Counters(), clock=clock, cluster=cluster)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port: IListeningPort = await endpoint.listen(make_admin_site(state, clock))
    try:
        yield f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    finally:
        stopping = port.stopListening()
        if stopping is not None:
            await stopping


@pytest_twisted.ensureDeferred
async def test_dashboard_shows_the_cluster(tmp_path: Path) -> None:
    """
    In a cluster the page shows a Cluster panel: the cluster's and this
    node's names, Redis up (its URL, password masked) and one row per live
    node (name, address, sessions, last heartbeat, uptime), this node
    marked, a node that missed a heartbeat flagged.  With Redis away it says
    Redis is down, that the nodes are as last read and that the limits are
    decided by this node alone, with the count of such admissions.
    """
    view = ClusterView(three_nodes(reactor.seconds()))
    async with admin_of(view) as url:
        page, attributes = await deferToThread(page_of, url + "/", tmp_path / "one")

        assert "hidden" not in attributes.by_id["cluster-section"]
        assert page.by_id["cluster-name"] == "eu, node n1"
        assert page.by_id["cluster-redis"] == "up"
        assert attributes.by_id["cluster-redis"]["class"] == "redis up"
        assert page.by_id["cluster-url"] == "redis://:***@127.0.0.1:6379/0"
        assert page.by_id["cluster-failures"] == "0"
        assert page.by_id["cluster-local"] == "0"
        assert "hidden" in attributes.by_id["cluster-alone"]
        assert "hidden" in attributes.by_id["cluster-stale"]
        rows = page.rows["cluster-nodes"]
        assert [row[:4] for row in rows] == [
            ["n1 this node", "tcp:n1.example:7000", "3", "1 s ago"],
            ["n2", "tcp:n2.example:7000", "5", "2 s ago"],
            ["n3", "tcp:n3.example:7000", "0", "12 s ago"],
        ]
        # Up since: read against the page's "now", a little later than the
        # nodes' start times were set.
        assert re.fullmatch(r"1 min \d+ s", rows[0][4])
        assert re.fullmatch(r"1 h \d+ min", rows[1][4])
        assert [row_class for row_class, _ in attributes.node_rows] == ["self", "", ""]
        late = ["late" in cells[3].split() for _, cells in attributes.node_rows]
        assert late == [False, False, True]
        assert view.documents >= 1
        assert page.by_id.get("error", "") == ""

        view.redis_up = False
        view.failures = 3
        view.local_admissions, view.limits_alone = 17, True
        page, attributes = await deferToThread(page_of, url + "/", tmp_path / "two")

        assert page.by_id["cluster-redis"] == "down"
        assert attributes.by_id["cluster-redis"]["class"] == "redis down"
        assert page.by_id["cluster-failures"] == "3"
        assert page.by_id["cluster-local"] == "17"
        assert "hidden" not in attributes.by_id["cluster-alone"]
        assert "hidden" not in attributes.by_id["cluster-stale"]
        assert len(page.rows["cluster-nodes"]) == 3


@pytest_twisted.ensureDeferred
async def test_dashboard_without_a_cluster(tmp_path: Path) -> None:
    """
    Without a cluster the Cluster panel stays hidden (and the page never
    asks for scope=cluster, which would be a 400: no error shows).
    """
    async with admin_of(None) as url:
        page, attributes = await deferToThread(page_of, url + "/", tmp_path / "profile")

    assert "hidden" in attributes.by_id["cluster-section"]
    assert page.rows["cluster-nodes"] == []
    assert page.by_id["host"] != "-"
    assert page.by_id.get("error", "") == ""
