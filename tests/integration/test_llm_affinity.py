"""LLM turns of one conversation land on one replica (Serve's consistent-hash request router keyed
on the conversation id), so a replica's prefix cache is reused from turn to turn.

An LLM application with two replicas of the tiny model and the router of serve_config.yaml is
deployed beside the session's apps. Ten conversations of four turns each (their history growing
as a real conversation's does) send the conversation id as `session_id` metadata, as the edge
does; each reply names the replica that generated it (GenerationDone.replica_id). A turn is a hit
when it lands on the replica of its conversation's first turn. The same traffic without the
session id is the contrast: there each turn lands anywhere, and about half of them are misses.
"""

from __future__ import annotations

import asyncio
import copy

import pytest
import yaml

from services.common import clients

pytestmark = pytest.mark.cluster

APP = "llm_affinity"
CONVERSATIONS, TURNS = 10, 4


@pytest.fixture(scope="module")
async def affinity_app(serve_cluster, tmp_path_factory) -> str:
    config = yaml.safe_load(serve_cluster.config.read_text())
    production = yaml.safe_load((serve_cluster.cluster.workdir / "serve_config.yaml").read_text())
    [llm] = [app for app in config["applications"] if app["name"] == "llm"]
    [shipped] = [app for app in production["applications"] if app["name"] == "llm"]
    app = copy.deepcopy(llm)
    app.update(name=APP, route_prefix="/llm-affinity")
    app["args"]["max_tokens"] = 4
    [deployment] = app["deployments"]
    deployment.update(num_replicas=2, max_ongoing_requests=8,
                      request_router_config=shipped["deployments"][0]["request_router_config"])
    deployment["ray_actor_options"] = {"num_cpus": 0.25}
    config["applications"].append(app)
    extended = tmp_path_factory.mktemp("affinity") / "serve.yaml"
    extended.write_text(yaml.safe_dump(config, sort_keys=False))
    cluster = serve_cluster.cluster
    await asyncio.to_thread(cluster.deploy, extended)
    try:
        await asyncio.to_thread(cluster.wait_running, [APP], 300)
        yield APP
    finally:
        await asyncio.to_thread(cluster.deploy, serve_cluster.config)
        await asyncio.to_thread(cluster.wait_removed, [APP])


async def conversation(channel, index: int, with_session: bool) -> list[str]:
    """Four turns of one conversation; the replica of each reply."""
    history, replicas = [("system", "You are a concise voice agent.")], []
    for turn in range(TURNS):
        history.append(("user", f"Conversation {index}, question {turn}: when does the shop open?"))
        reply = await clients.generate(channel, history, application=APP, max_tokens=4, temperature=0.0,
                                       session_id=f"conv-{index:02d}" if with_session else "")
        assert reply.done is not None and reply.done.replica_id
        replicas.append(reply.done.replica_id)
        history.append(("assistant", reply.text))
    return replicas


def hit_rate(runs: list[list[str]]) -> float:
    """Turns after the first that went to the conversation's first replica, over all such turns."""
    hits = sum(replica == run[0] for run in runs for replica in run[1:])
    return hits / sum(len(run) - 1 for run in runs)


async def test_turns_of_a_conversation_stay_on_one_replica(affinity_app, channel):
    sticky = await asyncio.gather(*(conversation(channel, i, with_session=True) for i in range(CONVERSATIONS)))
    loose = await asyncio.gather(*(conversation(channel, i, with_session=False) for i in range(CONVERSATIONS)))
    sticky_rate, loose_rate = hit_rate(sticky), hit_rate(loose)
    whole = sum(len(set(run)) == 1 for run in sticky) / CONVERSATIONS
    print(f"\nsame-replica turns: {sticky_rate:.0%} with the conversation id, {loose_rate:.0%} without; "
          f"conversations wholly on one replica: {whole:.0%}; replicas: {len({r for run in sticky + loose for r in run})}")
    assert len({replica for run in sticky + loose for replica in run}) == 2  # two replicas served
    assert sticky_rate >= 0.95, sticky
    assert loose_rate < 0.95, loose  # the same traffic without the key is spread: the router did it
