"""Workloads seen from every node of a cluster.

What the scheduler could not place is part of the replicated state, so
`/v2/queue` (and `atoll app deploy`, which reads it) tells the same story on
every node, not only on the leader that ran the scheduler.
"""

from __future__ import annotations

from conftest import wait_for
from test_cluster import new_cluster, pool  # noqa: F401 - fixtures


def _queued(node, app_id: str) -> list[dict]:
    return [q for q in node.get_json("/v2/queue")["queue"] if q["app"]["id"] == app_id]


def test_unplaceable_instances_are_queued_on_every_node(new_cluster):
    cluster = new_cluster("queue")
    cluster.add_servers(3)
    client = cluster.add_client()
    cluster.start()
    app = {"id": "/huge", "cmd": "sleep 1000", "cpus": 0.1, "mem": 64 * 1024 * 1024, "instances": 2}
    r = wait_for(lambda: (lambda r: r if r.status_code == 201 else None)(client.post("/v2/apps", json=app)),
                 timeout=15, message="the app to be accepted")
    assert r.json()["id"] == "/huge"
    for node in cluster.nodes:
        entries = wait_for(lambda: _queued(node, "/huge"), timeout=15, interval=0.2,
                           message=f"/huge in {node.name}'s /v2/queue")
        assert entries[0]["count"] == 2, entries
        reasons = " ".join(entries[0]["processedOffersSummary"]["rejectSummaryLastOffers"])
        assert "mem" in reasons.lower(), reasons
    # Its deployment never finishes: Marathon wants force to delete it.
    r = client.delete("/v2/apps/huge?force=true")
    assert r.status_code == 200, r.text
    for node in cluster.nodes:
        wait_for(lambda: not _queued(node, "/huge"), timeout=15, interval=0.2,
                 message=f"/huge to leave {node.name}'s /v2/queue")
