"""Chat encoding off the hot path: the Rust backend without offsets, one batch for the chats that
concurrent episodes ask for (ChatTokenizer.warm), and cheap snapshots of an agent's chat."""

import asyncio

import pytest

from erl.core.interfaces import Generation, SamplingParams
from erl.core.types import Step
from erl.models import chat as chat_mod
from erl.models.chat import ChatTokenizer, chat_text, encode_texts
from erl.models.tiny import build_tiny_tokenizer
from erl.rollout.batching import BatchingPolicy
from erl.rollout.turns import TurnPrompts, snapshot

TOK = build_tiny_tokenizer()


def chat_of(k):
    return [{"role": "system", "content": "Walk to the goal."}, {"role": "user", "content": f"obs {k} " * (k + 1)}]


def test_the_backend_encodes_as_the_tokenizer_does_and_yields_to_leftover_truncation():
    texts = [chat_text(TOK, chat_of(k)) for k in range(4)]
    assert encode_texts(TOK, texts) == [TOK.encode(t, add_special_tokens=False) for t in texts]
    TOK.backend_tokenizer.enable_truncation(max_length=3)  # as an earlier tokenizer(..., truncation=True) leaves it
    try:
        assert [len(ids) for ids in encode_texts(TOK, texts)] == [len(TOK.encode(t, add_special_tokens=False))
                                                                   for t in texts]
        assert all(len(ids) > 3 for ids in encode_texts(TOK, texts))  # not truncated
    finally:
        TOK.backend_tokenizer.no_truncation()


def test_chats_awaited_in_one_turn_of_the_loop_are_encoded_in_one_batch(monkeypatch):
    batches = []
    real = chat_mod.encode_texts

    def counted(tokenizer, texts):
        batches.append(len(texts))
        return real(tokenizer, texts)
    monkeypatch.setattr(chat_mod, "encode_texts", counted)
    chat = ChatTokenizer(TOK)

    async def episode(k):
        first = await chat.prompt_ids_async(chat_of(k))
        await asyncio.sleep(0)
        again = await chat.prompt_ids_async(chat_of(k))  # cached: no batch, no wait
        return first, again

    async def go():
        return await asyncio.gather(*[episode(k) for k in range(5)], episode(0))

    results = asyncio.run(go())
    # five distinct chats (the sixth episode repeats the first's), one batch of five
    assert batches == [5]
    fresh = ChatTokenizer(TOK)
    for k, (first, again) in zip([0, 1, 2, 3, 4, 0], results):
        assert first == again == fresh.prompt_ids(chat_of(k))


def test_a_failed_batch_fails_every_episode_that_waits_for_it(monkeypatch):
    def broken(tokenizer, texts):
        raise RuntimeError("tokenizer crashed")
    monkeypatch.setattr(chat_mod, "encode_texts", broken)
    chat = ChatTokenizer(TOK)

    async def go():
        return await asyncio.gather(*[chat.prompt_ids_async(chat_of(k)) for k in range(3)], return_exceptions=True)

    assert [str(e) for e in asyncio.run(go())] == ["tokenizer crashed"] * 3
    monkeypatch.undo()
    assert asyncio.run(chat.prompt_ids_async(chat_of(0))) == ChatTokenizer(TOK).prompt_ids(chat_of(0))


@pytest.mark.parametrize("plain", [False, True])
def test_turn_prompts_async_equal_the_synchronous_ones_across_turns(plain):
    """A first call (with and without its plain twin), a call that extends it, a rewritten chat."""
    reply = {"role": "assistant", "content": "go"}
    calls = [chat_of(1), chat_of(1) + [reply, {"role": "user", "content": "obs 2"}], chat_of(3)]

    def run(use_async):
        turns, out = TurnPrompts(ChatTokenizer(TOK)), []
        for messages in calls:
            kwargs = {"plain": messages[1:]} if plain else {}
            ids = (asyncio.run(turns.prompt_ids_async(messages, **kwargs)) if use_async
                   else turns.prompt_ids(messages, **kwargs))
            out.append((ids, turns.plain_ids))
            turns.replied(Step(prompt_ids=ids, response_ids=TOK.encode("go", add_special_tokens=False)), reply)
        return out

    assert run(True) == run(False)


def test_a_snapshot_is_out_of_reach_of_in_place_edits():
    parts = [{"type": "text", "text": "see"}]
    calls = [{"id": "c1", "function": {"name": "move", "arguments": {"dir": "up"}}}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": "", "tool_calls": calls}]
    copy = snapshot(messages)
    assert copy == messages
    parts[0]["text"] = "changed"
    calls[0]["function"]["arguments"]["dir"] = "down"
    messages[0]["content"] = "replaced"
    messages.append({"role": "user", "content": "more"})
    assert copy == [{"role": "user", "content": [{"type": "text", "text": "see"}]},
                    {"role": "assistant", "content": "",
                     "tool_calls": [{"id": "c1", "function": {"name": "move", "arguments": {"dir": "up"}}}]}]


def test_an_episode_cancelled_while_it_waits_leaves_the_batch_to_the_others():
    chat = ChatTokenizer(TOK)

    async def go():
        tasks = [asyncio.ensure_future(chat.prompt_ids_async(chat_of(k))) for k in range(3)]
        await asyncio.sleep(0)  # all three wait for the batch
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, cancelled, third = asyncio.run(go())
    assert isinstance(cancelled, asyncio.CancelledError)
    assert (first, third) == (ChatTokenizer(TOK).prompt_ids(chat_of(0)), ChatTokenizer(TOK).prompt_ids(chat_of(2)))


def test_a_batching_policy_waits_for_episodes_that_await_their_encoding():
    """Batches of at most 3: E1, E2 and L1 go first, L2 is left over. E1 and E2 then encode a new
    chat before their second request; the drain that serves L2 waits for them (2 batches, not
    3: waiting two turns of the loop, as it used to, sent L2 alone)."""
    class Recording(BatchingPolicy):
        def __init__(self):
            super().__init__(TOK, max_batch_size=3)
            self.batches = []

        def generate_batch(self, prompts, params):
            self.batches.append([p[0] for p in prompts])
            return [Generation(token_ids=[1], logprobs=[0.0], text="x", finish_reason="stop") for _ in prompts]

    policy, chat, params = Recording(), ChatTokenizer(TOK), SamplingParams(max_new_tokens=1)

    async def episode(k):
        await policy.generate([k], params)
        await chat.prompt_ids_async(chat_of(k))
        await policy.generate([10 + k], params)

    async def go():
        await asyncio.gather(episode(1), episode(2), policy.generate([3], params), policy.generate([4], params))

    asyncio.run(go())
    assert policy.batches == [[1, 2, 3], [4, 11, 12]]


def test_a_batching_policy_serves_each_request_once_one_sampling_setting_a_batch():
    """Requests of two sampling settings, interleaved, some with equal prompts: each batch takes the
    oldest request's setting, in queue order, at most max_batch_size; every request gets its own
    answer exactly once (equal requests are told apart by identity, not by value)."""
    class Echo(BatchingPolicy):
        def __init__(self):
            super().__init__(TOK, max_batch_size=2)
            self.batches = []

        def generate_batch(self, prompts, params):
            self.batches.append((params.max_new_tokens, [p[0] for p in prompts]))
            return [Generation(token_ids=list(p), logprobs=[0.0], text="", finish_reason="stop") for p in prompts]

    policy, a, b = Echo(), SamplingParams(max_new_tokens=1), SamplingParams(max_new_tokens=2)
    requests = [([1], a), ([2], b), ([1], a), ([3], a), ([4], b)]

    async def go():
        return await asyncio.gather(*(policy.generate(p, s) for p, s in requests))

    got = asyncio.run(go())
    assert [g.token_ids for g in got] == [p for p, _ in requests]
    assert policy.batches == [(1, [1, 1]), (2, [2, 4]), (1, [3])]


def test_a_cached_chat_resumes_its_episode_when_an_uncached_one_would():
    """Whether a chat is cached already (an earlier step, an eval, another task's grid) must not
    change the order episodes resume in: that order sets which requests the rollout engine admits
    together, their slots and rows, and so their random draws. A resumed run starts with an empty
    cache; with cache hits returning at once, its steps sampled other tokens than the original
    run's (docs/gpu/ratio_rise)."""
    def resumed_in(chat):
        order = []

        async def episode(name, k):
            await chat.prompt_ids_async(chat_of(k))
            order.append(name)

        async def go():
            await asyncio.gather(episode("b", 1), episode("a", 0))

        asyncio.run(go())
        return order

    warm = ChatTokenizer(TOK)
    warm.prompt_ids(chat_of(0))  # chat 0 cached
    assert resumed_in(ChatTokenizer(TOK)) == resumed_in(warm) == ["b", "a"]
