"""ReflectionMemory (ranking, eviction, dedup, persistence, threads) and its shared Ray actor."""

import asyncio
import json
import math
import os
import pickle
import sys
import threading
import time
from pathlib import Path

import pytest

from erl.memory import MemoryJournal, ReflectionMemory, bag_of_words, cosine

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def texts(entries):
    return [e.text for e in entries]


def ranking_memory():
    m = ReflectionMemory(max_size=10, top_k=1)
    m.add("ra", "lake", 1.0, step=0, query="a b c")
    m.add("rb", "lake", 0.5, step=1, query="a b")
    m.add("rc", "lake", 1.0, step=2, query="x y")
    m.add("rd", "box", 1.0, step=3, query="a")
    m.add("re", "box", 1.0, step=4, query="z")
    return m


# ---- similarity and ranking ---------------------------------------------------------------
def test_bag_of_words_and_cosine_by_hand():
    # Words are lower-cased; every non-space symbol is its own token (grid glyphs count).
    assert bag_of_words("Go #@ go") == {"go": 2, "#": 1, "@": 1}
    # (a b) . (a c) = 1; |a b| = |a c| = sqrt 2 -> 1/2
    assert cosine(bag_of_words("a b"), bag_of_words("a c")) == pytest.approx(0.5)
    # (a a b) . (a b) = 2 + 1 = 3; |a a b| = sqrt 5, |a b| = sqrt 2 -> 3/sqrt 10 = 0.9487
    assert cosine(bag_of_words("a a b"), bag_of_words("b a")) == pytest.approx(3 / math.sqrt(10))
    assert cosine(bag_of_words(""), bag_of_words("a")) == 0.0
    assert cosine(bag_of_words("a"), bag_of_words("b")) == 0.0


def test_retrieve_ranks_same_key_by_similarity_then_falls_back_to_similar_other_keys():
    m = ranking_memory()
    # query "a b" vs lake entries: rb "a b" -> 2/(sqrt2*sqrt2) = 1.0; ra "a b c" -> 2/(sqrt2*sqrt3)
    # = 0.8165; rc "x y" -> 0 (kept: same key). Other keys fill the rest only if cosine > 0:
    # rd "a" -> 1/(sqrt2*1) = 0.7071 joins; re "z" -> 0 does not. So 4 results although k=5.
    assert texts(m.retrieve("lake", "a b", k=5)) == ["rb", "ra", "rc", "rd"]
    # Similarity beats reward: rb (reward 0.5, cos 1.0) outranks ra (reward 1.0, cos 0.8165).
    assert texts(m.retrieve("lake", "a b")) == ["rb"]  # k defaults to top_k = 1


def test_retrieve_ties_break_by_reward_then_step_then_insertion():
    m = ranking_memory()
    # Empty query: every cosine is 0 -> reward desc (ra, rc = 1.0 before rb = 0.5), then the later
    # step first (rc step 2 before ra step 0); no other key qualifies (cosine 0 is not > 0).
    assert texts(m.retrieve("lake", "", k=5)) == ["rc", "ra", "rb"]
    t = ReflectionMemory(max_size=5)
    t.add("first", "k", 1.0, step=7, query="q")
    t.add("second", "k", 1.0, step=7, query="q")
    # Same cosine (1.0), reward and step: the later insertion wins.
    assert texts(t.retrieve("k", "q", k=2)) == ["second", "first"]


def test_retrieve_unknown_key_uses_similar_entries_only_and_counts_uses_and_hits():
    m = ranking_memory()
    # No "ice" entries; cosines to "a b": rb 1.0, ra 0.8165, rd 0.7071 (rc, re 0 excluded).
    assert texts(m.retrieve("ice", "a b", k=5)) == ["rb", "ra", "rd"]
    assert m.retrieve("ice", "q w") == []  # nothing similar: a miss
    assert m.retrieve("lake", "a b", k=0) == []  # asked for none: a miss
    got = m.retrieve("lake", "a b", k=1)  # rb again
    got[0].uses = 99  # copies: the caller cannot change the memory
    uses = {e.text: e.uses for e in m.entries()}
    assert uses == {"ra": 1, "rb": 2, "rc": 0, "rd": 1, "re": 0}
    s = m.stats()
    # 4 retrievals, 2 returned something -> hit_rate 0.5
    assert (s["retrievals"], s["hits"], s["hit_rate"], s["size"], s["adds"]) == (4, 2, 0.5, 5, 5)


def test_a_repeated_retrieval_is_ranked_again_after_every_change_that_can_reorder_it():
    """A retrieval repeated with the same key, query and k (an ERL wave asks once for each of a
    task's n episodes) returns what scoring again would, with its uses counted each time, until a
    change that can reorder: a better entry stored, a merge that raises a reward, an eviction, a load."""
    m = ranking_memory()
    assert texts(m.retrieve("lake", "a b", k=2)) == ["rb", "ra"]
    assert texts(m.retrieve("lake", "a b", k=2)) == ["rb", "ra"]
    assert {e.text: e.uses for e in m.entries()}["rb"] == 2
    m.add("rf", "lake", 0.1, step=5, query="b a")  # cosine 1.0, ties rb's; reward 0.1 < 0.5: after rb
    assert texts(m.retrieve("lake", "a b", k=2)) == ["rb", "rf"]
    m.add("rf", "lake", 0.9, step=5)  # merged: rf's reward 0.9 now beats rb's 0.5 at the same cosine
    assert texts(m.retrieve("lake", "a b", k=2)) == ["rf", "rb"]
    small = ReflectionMemory(max_size=2)
    small.add("old", "k", 0.2, query="q")
    small.add("new", "k", 0.5, query="q")
    assert texts(small.retrieve("k", "q")) == ["new"]
    # full: each add evicts the least reward: "old" (0.2), then "other" (0.3), then "another" (0.4)
    for text, reward in (("other", 0.3), ("another", 0.4), ("last", 0.6)):
        small.add(text, "k", reward, query="p")
    assert texts(small.retrieve("k", "q")) == ["new"]  # "last" has cosine 0 to "q"
    small.add("best", "k", 0.1, query="q")  # evicts "new" (0.5 < 0.6): "best" is the one left with cosine 1
    assert texts(small.retrieve("k", "q")) == ["best"]
    state = m.state_dict()
    fresh = ReflectionMemory(max_size=10, top_k=1)
    fresh.add("zz", "lake", 1.0, query="a b")
    assert texts(fresh.retrieve("lake", "a b", k=2)) == ["zz"]
    fresh.load_state_dict(state)
    assert texts(fresh.retrieve("lake", "a b", k=2)) == ["rf", "rb"]


# ---- dedup and eviction -------------------------------------------------------------------
def test_same_text_same_key_is_merged_not_duplicated():
    m = ReflectionMemory(max_size=1)
    assert m.add("x", "k", 0.5, step=2, query="q") is True
    assert m.add("x", "k", 1.0, step=1, query="other") is False  # reward -> max 1.0, step stays 2
    assert m.add("x", "k", 0.2, step=5) is False  # reward stays 1.0, step -> 5
    [e] = m.entries()
    assert (e.reward, e.step, e.query, e.added) == (1.0, 5, "q", 0)
    s = m.stats()  # a full memory (max_size 1) evicted nothing for the duplicates
    assert (s["size"], s["adds"], s["duplicates"], s["evictions"]) == (1, 1, 2, 0)
    assert m.add("x", "k2", 1.0) is True  # same text, other key: a new entry (evicts the old)
    assert [(e.key, e.added) for e in m.entries()] == [("k2", 1)]


def test_eviction_order_on_full_memory():
    m = ReflectionMemory(max_size=3)
    m.add("e0", "k", 1.0, step=0, query="zero")
    m.add("e1", "k", 0.5, step=1, query="one")
    m.add("e2", "k", 0.5, step=2, query="two")
    assert texts(m.retrieve("k", "one")) == ["e1"]  # e1 now has 1 use
    # Full. Lowest reward: e1, e2 (0.5); fewer uses: e2 (0 < 1) -> e2 goes.
    m.add("e3", "k", 1.0, step=3)
    assert texts(m.entries()) == ["e0", "e1", "e3"]
    # Lowest reward: e1 (0.5) goes although it was used.
    m.add("e4", "k", 1.0, step=3)
    assert texts(m.entries()) == ["e0", "e3", "e4"]
    # All 1.0, 0 uses: lowest step goes (e0 step 0).
    m.add("e5", "k", 1.0, step=3)
    assert texts(m.entries()) == ["e3", "e4", "e5"]
    # All 1.0, 0 uses, step 3: oldest insertion goes (e3).
    m.add("e6", "k", 0.1, step=3)  # the newcomer is stored even with the lowest reward
    assert texts(m.entries()) == ["e4", "e5", "e6"]
    s = m.stats()
    assert (s["size"], s["adds"], s["evictions"]) == (3, 7, 4)


# ---- persistence --------------------------------------------------------------------------
def busy_memory():
    m = ReflectionMemory(max_size=4, top_k=2)
    for i in range(6):
        m.add(f"r{i}", "lake" if i % 2 else "box", 0.5 + 0.1 * i, step=i, query=f"a{i} b c")
    m.add("r5", "lake", 0.1, step=9)  # a duplicate
    m.retrieve("lake", "b c")
    m.retrieve("box", "a4")
    m.retrieve("ice", "nothing")
    return m


def same_future(a, b):
    """Both memories answer the same op sequence identically (incl. an eviction)."""
    for m in (a, b):
        m.add("new", "box", 0.95, step=10, query="a3 b")
    assert a.retrieve("lake", "a3 b c", k=3) == b.retrieve("lake", "a3 b c", k=3)
    assert a.retrieve("box", "", k=4) == b.retrieve("box", "", k=4)
    assert a.stats() == b.stats()
    assert a.state_dict() == b.state_dict()


def test_state_dict_round_trip_restores_exactly():
    m = busy_memory()
    state = json.loads(json.dumps(m.state_dict()))  # JSON-able, as in a checkpoint's memory.json
    restored = ReflectionMemory(max_size=99, top_k=0)
    restored.load_state_dict(state)
    assert restored.state_dict() == m.state_dict()
    assert (restored.max_size, restored.top_k, len(restored)) == (4, 2, 4)
    assert restored.entries() == m.entries()  # entries, uses, order
    same_future(m, restored)


def test_save_load_file_round_trip_is_atomic(tmp_path, monkeypatch):
    m = busy_memory()
    path = tmp_path / "ckpt" / "memory.json"
    assert m.save(path) == path
    assert os.listdir(path.parent) == ["memory.json"]  # no temporary file left behind
    loaded = ReflectionMemory.load(path)
    assert loaded.state_dict() == m.state_dict()
    same_future(m, loaded)
    before = path.read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert path.read_text() == before and os.listdir(path.parent) == ["memory.json"]


def test_a_journal_replayed_on_its_start_ends_where_the_journal_did():
    """A worker's copy: its calls, replayed on the state it started from, give its own state exactly
    (entries, order, uses, counters); on a memory that another worker added to first, they act
    on that memory (the newcomers are ranked and evicted with the rest)."""
    start = ReflectionMemory(max_size=3, top_k=1)
    start.add("go right", "lake", 1.0, 1, "grid a")
    start.add("go down", "lake", 0.5, 2, "grid b")
    journal = MemoryJournal(start.state_dict())
    assert [e.text for e in journal.retrieve("lake", "grid b")] == ["go down"]
    assert journal.add("go left", "lake", 1.0, 3, "grid c") is True
    assert journal.add("go left", "lake", 0.2, 4, "grid c") is False  # merged: reward stays 1.0, step 4
    assert journal.add("avoid holes", "lake", 1.0, 4, "grid d") is True  # full: "go down" (0.5) goes
    assert [e.text for e in journal.retrieve("lake", "grid d")] == ["avoid holes"]
    with pytest.raises(ValueError):
        journal.add("", "lake", 1.0)  # refused, and not journaled
    assert [c[0] for c in journal.calls] == ["retrieve", "add", "add", "add", "retrieve"]
    assert len(start) == 2  # the copy is private

    replayed = ReflectionMemory()
    replayed.load_state_dict(start.state_dict())
    replayed.replay(journal.calls)
    assert replayed.state_dict() == journal.memory.state_dict()
    assert [(e.text, e.reward, e.step, e.uses) for e in replayed.entries()] == [
        ("go right", 1.0, 1, 0), ("go left", 1.0, 4, 0), ("avoid holes", 1.0, 4, 1)]
    assert replayed.stats()["evictions"] == 1 and replayed.stats()["retrievals"] == 2

    # another worker's reflection reached the memory first: the memory is full one add sooner, so the
    # same calls evict "go down" (reward 0.5) and then "go right" (1.0, never used, the oldest step)
    other = ReflectionMemory()
    other.load_state_dict(start.state_dict())
    other.add("go up", "lake", 1.0, 3, "grid e")
    other.replay(journal.calls)
    assert [e.text for e in other.entries()] == ["go up", "go left", "avoid holes"]


def test_replay_refuses_what_is_not_an_add_or_a_retrieval():
    m = ReflectionMemory()
    for calls in ([("load_state_dict", [{}])], [("add", "text")], ["add"]):
        with pytest.raises(ValueError, match="not an"):
            m.replay(calls)
    assert m.stats()["adds"] == 0


def test_pickle_round_trip():
    m = busy_memory()
    copy = pickle.loads(pickle.dumps(m))
    assert copy.state_dict() == m.state_dict()
    same_future(m, copy)


def test_load_state_dict_rejects_corrupt_state():
    good = busy_memory().state_dict()
    m = ReflectionMemory()
    with pytest.raises(ValueError, match="not a ReflectionMemory state"):
        m.load_state_dict({"entries": []})
    bad = json.loads(json.dumps(good))
    del bad["counters"]["hits"]
    with pytest.raises(ValueError, match="corrupt"):
        m.load_state_dict(bad)
    bad = json.loads(json.dumps(good))
    bad["entries"][0]["reward"] = "high"
    with pytest.raises(ValueError, match="reward"):
        m.load_state_dict(bad)
    bad = json.loads(json.dumps(good))
    bad["entries"][1]["added"] = bad["entries"][0]["added"]
    with pytest.raises(ValueError, match="insertion ids"):
        m.load_state_dict(bad)
    assert len(m) == 0  # a failed load changes nothing


# ---- threads ------------------------------------------------------------------------------
@pytest.mark.parametrize("max_size", [1000, 50])
def test_concurrent_adds_and_retrieves_keep_counters_consistent(max_size):
    m = ReflectionMemory(max_size=max_size, top_k=2)
    n_threads, n_ops = 8, 200
    barrier = threading.Barrier(n_threads)
    returned = [0] * n_threads

    def work(t):
        barrier.wait()
        for i in range(n_ops):
            # i % 100: the second 100 calls repeat the first 100 texts (duplicates if still stored)
            m.add(f"t{t}-{i % 100}", f"k{t % 2}", 1.0, step=i, query=f"w{i % 7}")
            returned[t] += len(m.retrieve(f"k{t % 2}", f"w{i % 5}"))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to expose races
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    s = m.stats()
    calls = n_threads * n_ops  # 1600 adds and 1600 retrievals
    assert s["adds"] + s["duplicates"] == calls
    assert s["size"] == len(m) == s["adds"] - s["evictions"] == min(max_size, s["adds"])
    assert s["retrievals"] == calls
    if max_size == 1000:  # nothing evicted: 8 x 100 distinct texts, 8 x 100 exact repeats
        assert (s["adds"], s["duplicates"], s["evictions"]) == (800, 800, 0)
    assert len({e.added for e in m.entries()}) == len(m)
    if max_size == 1000:  # every returned entry's use was counted exactly once
        assert sum(e.uses for e in m.entries()) == sum(returned)


# ---- bad arguments ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"max_size": 0}, "max_size"), ({"max_size": "3"}, "max_size"), ({"max_size": True}, "max_size"),
    ({"top_k": -1}, "top_k"), ({"top_k": 1.5}, "top_k"),
])
def test_bad_constructor_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReflectionMemory(**kwargs)


@pytest.mark.parametrize("args, error, match", [
    (("", "k", 1.0), ValueError, "text"), (("  \n", "k", 1.0), ValueError, "text"),
    ((None, "k", 1.0), TypeError, "text"), (("t", 3, 1.0), TypeError, "key"),
    (("t", "k", float("nan")), ValueError, "reward"), (("t", "k", float("inf")), ValueError, "reward"),
    (("t", "k", "1.0"), ValueError, "reward"), (("t", "k", True), ValueError, "reward"),
    (("t", "k", 1.0, -1), ValueError, "step"), (("t", "k", 1.0, 0, None), TypeError, "query"),
])
def test_bad_add_args(args, error, match):
    m = ReflectionMemory()
    with pytest.raises(error, match=match):
        m.add(*args)
    assert len(m) == 0 and m.stats()["adds"] == 0


def test_bad_retrieve_args():
    m = ReflectionMemory()
    with pytest.raises(ValueError, match="k must be"):
        m.retrieve("k", "q", k=-1)
    with pytest.raises(TypeError, match="query"):
        m.retrieve("k", None)
    assert m.stats()["retrievals"] == 0


# ---- Ray: one memory shared by worker processes --------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    try:
        import ray

        started = not ray.is_initialized()  # another module's Ray is reused, and left running
        if started:
            ray.init(num_cpus=2, include_dashboard=False, namespace="erl_test_memory",
                     log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - any start failure (ports, /dev/shm) -> skip, say why
        pytest.skip(f"ray failed to start: {type(exc).__name__}: {exc}")
    yield ray
    if started:
        ray.shutdown()


def make_worker_class(ray):
    # Defined in a function so Ray ships it by value (workers cannot import this test module).
    @ray.remote(num_cpus=1)
    class RolloutWorker:
        def __init__(self, name):
            from erl.memory.ray_memory import (
                RayMemoryClient,
                get_or_create_memory_actor,
            )

            self.client = RayMemoryClient(get_or_create_memory_actor(name, detached=True), name)

        def pid(self):
            return os.getpid()

        def store(self, text, key, query):
            return asyncio.run(self.client.add(text, key, 1.0, 3, query))

        def fetch(self, key, query, client=None):
            entries = asyncio.run((client or self.client).retrieve(key, query, 2))
            return [e.text for e in entries]

    return RolloutWorker


def test_two_ray_workers_share_one_memory(ray_session):
    ray = ray_session
    from erl.memory.ray_memory import RayMemoryClient, get_or_create_memory_actor

    worker_cls = make_worker_class(ray)
    # Both workers race to create the detached actor by name; get_if_exists yields one actor.
    a, b = worker_cls.remote("shared"), worker_cls.remote("shared")
    pid_a, pid_b = ray.get([a.pid.remote(), b.pid.remote()])
    assert pid_a != pid_b != os.getpid()
    assert ray.get(a.store.remote("push the box left first", "sokoban", "room # @ $ .")) is True
    # Worker B, another process, reads what worker A wrote (same key; the other key is absent).
    assert ray.get(b.fetch.remote("sokoban", "# $ @")) == ["push the box left first"]
    assert ray.get(b.store.remote("avoid the holes", "lake", "grid o o x")) is True
    assert ray.get(a.fetch.remote("lake", "")) == ["avoid the holes"]
    # The driver's client, pickled into worker A, sees the same actor.
    client = RayMemoryClient(get_or_create_memory_actor("shared"), "shared")
    assert ray.get(a.fetch.remote("sokoban", "room", client)) == ["push the box left first"]
    s = client.stats()
    assert (s["size"], s["adds"], s["retrievals"], s["hits"]) == (2, 2, 3, 3)
    assert len(client) == 2
    ray.kill(client.handle)  # detached: it would outlive the workers


def test_a_worker_journal_replays_on_the_actor_in_one_call(ray_session):
    from erl.memory.ray_memory import RayMemoryClient

    client = RayMemoryClient.connect("journaled", create=True, max_size=4, top_k=1)
    client.add_sync("go right", "lake", 1.0, 1, "grid a")
    journal = MemoryJournal(client.state_dict())  # what a rollout worker starts its phase from
    journal.retrieve("lake", "grid a")
    journal.add("avoid holes", "lake", 1.0, 2, "grid b")
    assert len(client) == 1  # nothing reached the actor yet
    client.replay(journal.calls)
    assert client.state_dict() == journal.memory.state_dict()
    assert [e.text for e in client.entries()] == ["go right", "avoid holes"]
    ray_session.kill(client.handle)


async def test_actor_state_restores_exactly_into_a_fresh_actor(ray_session, tmp_path):
    from erl.memory.ray_memory import RayMemoryClient

    old = RayMemoryClient.connect("old", create=True, max_size=3, top_k=1)
    for i, reward in enumerate([1.0, 0.5, 0.8, 0.9]):  # 4 into 3: r1 (0.5) is evicted
        assert await old.add(f"r{i}", "lake", reward, i, f"q{i} grid") is True
    assert await old.add("r3", "lake", 0.2, 7) is False
    assert texts(await old.retrieve("lake", "q2 grid")) == ["r2"]
    path = old.save(tmp_path / "memory.json")
    fresh = RayMemoryClient.connect("fresh", create=True)  # default shape 256/1; the state brings 3/1
    fresh.load_state_dict(json.loads(Path(path).read_text()))
    assert fresh.state_dict() == old.state_dict()
    for client in (old, fresh):
        assert await client.add("r9", "lake", 1.0, 9, "q9") is True  # evicts r2 (0.8) in both
    assert await old.retrieve("lake", "grid", 3) == await fresh.retrieve("lake", "grid", 3)
    assert old.stats() == fresh.stats() and old.stats()["evictions"] == 2
    assert [e.text for e in old.entries()] == ["r0", "r3", "r9"]


async def test_dead_or_mismatched_actor_gives_clear_errors(ray_session):
    ray = ray_session
    from erl.memory.ray_memory import RayMemoryClient, get_or_create_memory_actor

    client = RayMemoryClient.connect("doomed", create=True, max_size=5, timeout_s=10)
    with pytest.raises(ValueError, match=r"exists with \(max_size, top_k\)=\(5, 1\)"):
        get_or_create_memory_actor("doomed", max_size=6)
    with pytest.raises(ValueError, match="reward"):  # the actor's own error comes through
        await client.add("t", "k", float("nan"))
    ray.kill(client.handle, no_restart=True)
    # ray.kill is asynchronous: a call may still be served just after it; within seconds every
    # call must fail with the clear error (and never hang: the client's timeout bounds each one)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.stats()
        except RuntimeError as exc:
            assert "'doomed' is dead or unreachable" in str(exc)
            break
        assert time.monotonic() < deadline, "a killed memory actor kept answering"
        time.sleep(0.1)
    with pytest.raises(RuntimeError, match="'doomed' is dead or unreachable"):
        await client.retrieve("k", "q")


async def test_connect_attaches_to_the_named_actor_or_fails_never_creates(ray_session):
    """A second Ray job that leaves out the namespace used to get a new, empty actor of its
    own (get_if_exists in its anonymous namespace) and trained against an empty memory."""
    ray = ray_session
    from erl.memory.ray_memory import RayMemoryClient

    here = ray.get_runtime_context().namespace
    owner = RayMemoryClient.connect("shared_mem", create=True, max_size=4)
    assert await owner.add("keep left", "lake", 1.0) is True
    attached = RayMemoryClient.connect("shared_mem")  # this job's namespace: the same actor
    assert [e.text for e in attached.entries()] == ["keep left"]
    assert [e.text for e in RayMemoryClient.connect("shared_mem", namespace=here).entries()] == ["keep left"]
    # What another job sees without the namespace: its own, where no such actor lives.
    with pytest.raises(LookupError, match=rf"'shared_mem' in Ray namespace 'job_b'.*namespace\(s\) \['{here}'\]"):
        RayMemoryClient.connect("shared_mem", namespace="job_b")
    with pytest.raises(LookupError, match="the driver creates it"):
        RayMemoryClient.connect("never_made")
    names = {(a["namespace"], a["name"]) for a in ray.util.list_named_actors(all_namespaces=True)}
    assert ("job_b", "shared_mem") not in names and not any(n == "never_made" for _, n in names)
    with pytest.raises(TypeError, match="create=True"):
        RayMemoryClient.connect("shared_mem", max_size=4)
    ray.kill(owner.handle)
