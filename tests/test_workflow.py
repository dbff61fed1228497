"""ErlWorkflow with a scripted policy: every branch of the loop, token-exact trajectories."""

import asyncio

import pytest

from erl.core.config import ErlConfig
from erl.core.reflection import GUIDANCE_HEADER
from erl.core.samples import episode_to_samples, trajectory_to_sequences
from erl.core.types import Segment
from erl.memory import MemoryJournal, ReflectionMemory
from erl.models.tiny import build_tiny_tokenizer
from erl.rollout.scripted import ScriptedPolicy
from erl.workflow.chat_agent import ChatAgent
from erl.workflow.erl_workflow import ErlWorkflow

TOK = build_tiny_tokenizer()


class TwoTurnEnv:
    """Needs two moves; succeeds iff the second move says 'right'. Reward 1 or 0."""

    def __init__(self):
        self.turn = 0

    def reset(self):
        self.turn = 0
        return "You see #.$", {}

    def step(self, action):
        self.turn += 1
        if self.turn == 1:
            return f"You said {action!r}. Again.", 0.0, False, {"success": False}
        ok = "right" in str(action).lower()
        return ("Done." if ok else "Wrong."), float(ok), True, {"success": ok}

    def close(self):
        pass


def script(prompt: str, i: int) -> str:
    """A policy that is right only when guided: the guidance tells it to say 'right'."""
    if "## The attempt, turn by turn" in prompt:
        return "thinking... <prompt>On the second move say right.</prompt>"
    return "right" if "say right" in prompt else "left"


def make(config=None, memory=None, fn=script):
    policy = ScriptedPolicy(TOK, fn)
    wf = ErlWorkflow(lambda t: ChatAgent(system_prompt="Play. Reply with a move."), lambda t: TwoTurnEnv(),
                     policy, config or ErlConfig(), memory=memory)
    return wf, policy


TASK = {"task_id": "t0", "env": "toy", "memory_key": "toy"}


def test_full_loop_segments_rewards_and_memory():
    mem = ReflectionMemory(max_size=8, top_k=1)
    wf, policy = make(memory=mem)
    ep = asyncio.run(wf.run(TASK, "t0:0"))
    names = [t.name for t in ep.trajectories]
    assert names == ["attempt1", "reflection", "attempt2", "distill"]
    # r1 = 0 (said 'left'), the reflection is rewarded with r2 = 1, attempt2 r2 = 1, distill r2 = 1
    assert [t.reward for t in ep.trajectories] == [0.0, 1.0, 1.0, 1.0]
    assert ep.is_correct and ep.metrics["r1"] == 0.0 and ep.metrics["r2"] == 1.0
    assert ep.metrics["memory_stored"] == 1.0 and len(mem) == 1
    assert mem.retrieve("toy", "", 1)[0].text == "On the second move say right."
    # 2 model calls per attempt + 1 reflection call
    assert len(policy.calls) == 5


def test_tokens_are_exactly_what_the_model_saw():
    wf, policy = make()
    ep = asyncio.run(wf.run(TASK, "t0:0"))
    a1 = ep.get(Segment.ATTEMPT1)
    (seq,) = trajectory_to_sequences(a1)  # two turns merge into one sequence
    # The second call's prompt is the first prompt + reply + glue + observation: a strict extension.
    assert policy.calls[1].startswith(policy.calls[0])
    full = TOK.decode(seq.prompt_ids + seq.response_ids)
    assert full == policy.calls[1] + "left<|im_end|>"
    # Trainable tokens are exactly the two generated replies (each 'left' + end token).
    trained = [t for t, m in zip(seq.response_ids, seq.response_mask) if m]
    assert TOK.decode(trained) == "left<|im_end|>left<|im_end|>"
    # The observation sits in the untrained part.
    untrained = TOK.decode([t for t, m in zip(seq.response_ids, seq.response_mask) if not m])
    assert "You said 'left'. Again." in untrained and "left" not in untrained.replace("'left'", "")


def test_distill_is_attempt2_on_the_plain_prompt():
    wf, _ = make()
    ep = asyncio.run(wf.run(TASK, "t0:0"))
    (a2,) = trajectory_to_sequences(ep.get("attempt2"))
    (d,) = trajectory_to_sequences(ep.get("distill"))
    assert GUIDANCE_HEADER in TOK.decode(a2.prompt_ids)
    assert GUIDANCE_HEADER not in TOK.decode(d.prompt_ids)
    assert TOK.decode(d.prompt_ids) == TOK.decode(ep.get("attempt1").info["prompt_ids"])
    assert d.response_ids == a2.response_ids and d.response_mask == a2.response_mask


def test_gate_success_skips_reflection():
    wf, policy = make(fn=lambda p, i: "right")
    ep = asyncio.run(wf.run(TASK, "t0:0"))
    assert [t.name for t in ep.trajectories] == ["attempt1"]
    assert ep.metrics["reflected"] == 0.0 and ep.is_correct
    assert len(policy.calls) == 2


def test_unparseable_reflection_gets_zero_and_no_second_attempt():
    def fn(prompt, i):
        return "I have no idea." if "## The attempt" in prompt else "left"

    wf, policy = make(fn=fn)
    ep = asyncio.run(wf.run(TASK, "t0:0"))
    assert [t.name for t in ep.trajectories] == ["attempt1", "reflection"]
    assert ep.get("reflection").reward == 0.0
    assert ep.metrics["reflection_parse_fail"] == 1.0 and ep.info["parse_error"] == "missing_tag"
    assert len(policy.calls) == 3


def test_rlvr_mode_runs_first_attempt_only():
    wf, _ = make(ErlConfig(mode="rlvr"))
    ep = asyncio.run(wf.run(TASK, "t0:0"))
    assert [t.name for t in ep.trajectories] == ["attempt1"] and ep.metrics["reflected"] == 0.0


def test_no_reflection_mode_retries_with_raw_feedback():
    # Guided by the raw first attempt (which contains "Wrong."), this policy says right.
    def fn(prompt, i):
        return "right" if "Your previous attempt" in prompt else "left"

    wf, policy = make(ErlConfig(mode="no_reflection"), fn=fn)
    ep = asyncio.run(wf.run(TASK, "t0:0"))
    assert [t.name for t in ep.trajectories] == ["attempt1", "attempt2", "distill"]
    assert "## The attempt" not in "".join(policy.calls)  # no reflection request was made
    assert ep.get("attempt2").reward == 1.0


def test_no_memory_mode_neither_reads_nor_writes():
    mem = ReflectionMemory(max_size=8, top_k=1)
    mem.add("Stale advice.", "toy", 1.0)
    wf, policy = make(ErlConfig(mode="no_memory"), memory=mem)
    asyncio.run(wf.run(TASK, "t0:0"))
    assert "Stale advice." not in "".join(policy.calls)
    assert len(mem) == 1


def test_memory_is_shown_to_the_next_reflection():
    mem = ReflectionMemory(max_size=8, top_k=1)
    wf, policy = make(memory=mem)
    asyncio.run(wf.run(TASK, "t0:0"))
    asyncio.run(wf.run(TASK, "t0:1"))
    reflection_prompts = [c for c in policy.calls if "## The attempt" in c]
    assert "Instructions that led to success" not in reflection_prompts[0]
    assert "On the second move say right." in reflection_prompts[1]


def test_two_workers_on_journals_sample_the_same_whichever_ran_first():
    """Two rollout workers, one episode each, start a step from one memory. Writing to the shared
    memory as they go, the one that runs second reads the other's reflection, so what it writes
    depends on their timing; on journals (erl.memory.MemoryJournal) replayed in rank order, neither
    sees the other's within the step, and the step and the memory after it are the same in both
    orders."""
    def reflections(mode: str, order: tuple[int, int]) -> tuple[list[str], dict]:
        shared = ReflectionMemory(max_size=8, top_k=1)
        start = shared.state_dict()
        workflows = {rank: make(memory=shared if mode == "shared" else MemoryJournal(start)) for rank in (0, 1)}
        for rank in order:
            asyncio.run(workflows[rank][0].run(TASK, f"t0:{rank}"))
        if mode == "journal":
            for rank in (0, 1):
                shared.replay(workflows[rank][0].memory.calls)
        prompts = [next(c for c in workflows[rank][1].calls if "## The attempt" in c) for rank in (0, 1)]
        return ["Instructions that led to success" in p for p in prompts], shared.state_dict()

    assert reflections("shared", (0, 1))[0] == [False, True]  # the timing decides what rank 1 saw
    assert reflections("shared", (1, 0))[0] == [True, False]
    first, second = reflections("journal", (0, 1)), reflections("journal", (1, 0))
    assert first == second and first[0] == [False, False]
    # replayed in rank order, rank 1's retrieval is made after rank 0's reflection was stored: it
    # counts a use of it (the memory's counters describe the replay), and rank 1's same text merges
    assert [(e["text"], e["uses"]) for e in first[1]["entries"]] == [("On the second move say right.", 1)]
    assert first[1]["counters"]["duplicates"] == 1 and first[1]["counters"]["retrievals"] == 2


def test_samples_rows_rewards_and_group_keys():
    wf, _ = make()
    ep = asyncio.run(wf.run(TASK, "t0:0"))
    rows = episode_to_samples(ep)
    assert [(r.segment.value, r.reward) for r in rows] == [
        ("attempt1", 0.0), ("reflection", 1.0), ("attempt2", 1.0), ("distill", 1.0)]
    assert [r.group_key for r in rows] == ["t0|attempt1", "t0|reflection", "t0|attempt2", "t0|distill"]
    for r in rows:
        assert len(r.response_ids) == len(r.response_mask) == len(r.logprobs)


@pytest.mark.parametrize("reply", ["", "x" * 5000, "\udcff broken surrogate", "<prompt></prompt>"])
def test_garbage_model_text_never_crashes(reply):
    wf, _ = make(fn=lambda p, i: reply)
    ep = asyncio.run(wf.run(TASK, "t0:0"))
    assert ep.get("attempt1").reward == 0.0
    assert ep.metrics["reflection_parse_fail"] == 1.0


def test_concurrent_episodes_share_one_policy():
    wf, policy = make()
    async def many():
        return await asyncio.gather(*[wf.run(TASK, f"t0:{k}") for k in range(6)])

    eps = asyncio.run(many())
    assert all(ep.get("attempt2").reward == 1.0 for ep in eps)
    assert len(policy.calls) == 6 * 5


@pytest.mark.parametrize("result, error, match", [
    (("obs", None, True, {}), TypeError, r"BadEnv.step\(\) returned a reward of type NoneType \(None\); a reward is a number"),
    (("obs", "good", True, {}), TypeError, r"reward of type str \('good'\)"),
    (("obs", "1", True, {}), TypeError, r"reward of type str \('1'\)"),  # had passed as 1.0
    (("obs", float("nan"), True, {}), ValueError, r"returned a reward of nan; a reward is a finite number"),
    (("obs", 1.0, True, False, {}), TypeError, r"got tuple of 5: Gymnasium's \(obs, reward, terminated, truncated"),
    (("obs", 1.0, True, "info"), TypeError, r"BadEnv.step\(\) returned info of type str"),
])
def test_an_env_breaking_the_step_contract_is_named(result, error, match):
    """rLLM's env contract, checked where the attempt calls it: the env's class and what it must
    return, where a bad reward had surfaced as float()'s message or as a non-finite loss three steps
    later. A reward that is a number and info None pass."""
    class BadEnv(TwoTurnEnv):
        def step(self, action):
            return result

    wf = ErlWorkflow(lambda t: ChatAgent(system_prompt="Play."), lambda t: BadEnv(), ScriptedPolicy(TOK, script),
                     ErlConfig())
    with pytest.raises(error, match=match):
        asyncio.run(wf.attempt(dict(TASK), "attempt1"))


def test_an_env_reset_returning_a_bare_observation_is_named():
    from erl.workflow.attempt import checked_reset, checked_step

    class Bare(TwoTurnEnv):
        def reset(self):
            return "You see #.$"

    wf = ErlWorkflow(lambda t: ChatAgent(system_prompt="Play."), lambda t: Bare(), ScriptedPolicy(TOK, script),
                     ErlConfig())
    with pytest.raises(TypeError, match=r"Bare.reset\(\) must return \(observation, info\), got str"):
        asyncio.run(wf.attempt(dict(TASK), "attempt1"))
    env = TwoTurnEnv()
    assert checked_reset(env, ("o", None)) == ("o", {})
    assert checked_step(env, ("o", 1, 0, None)) == ("o", 1.0, False, {})


def test_a_runner_that_breaks_the_attempt_contract_is_named(tmp_path, monkeypatch):
    """A sync runner, one that returns a dict, or a Trajectory without info['success'] is a TypeError
    naming the runner and the protocol (had been "can't be used in 'await'", "'dict' object has no
    attribute 'reward'", KeyError: 'success'); a runner factory returning something else is refused
    by the config."""
    from erl.core.config import ConfigError
    from erl.core.types import Trajectory
    from erl.workflow.factories import load_runner

    class Sync:
        def __call__(self, task, **kw):
            return Trajectory(name="attempt1", task=task)

    class Dicts:
        async def __call__(self, task, **kw):
            return {"reward": 1.0}

    class NoSuccess:
        async def __call__(self, task, **kw):
            return Trajectory(name="attempt1", task=task)

    for runner, match in ((Sync(), "the runner Sync returned Trajectory: an AttemptRunner is async"),
                          (Dicts(), "the runner Dicts returned dict: an attempt is a Trajectory"),
                          (NoSuccess(), r"returned a Trajectory without info\['success'\]")):
        wf = ErlWorkflow(policy=ScriptedPolicy(TOK, script), runner=runner)
        with pytest.raises(TypeError, match=match):
            asyncio.run(wf.attempt(dict(TASK), "attempt1"))
    (tmp_path / "my_runners.py").write_text("def make():\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"runner 'my_runners:make': the factory returned int, not an AttemptRunner"):
        load_runner("my_runners:make")
