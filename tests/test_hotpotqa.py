"""HotpotQA: the reward on hand-worked cases, data loading, search, the text env, the
LangGraph example through the adapter, and two CPU training steps on the fixture."""

import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from erl.core.config import ConfigError, ErlConfig
from erl.envs import hotpotqa
from erl.envs.hotpotqa import (
    FIXTURE,
    HotpotQAEnv,
    answer_f1,
    extract_answer,
    hotpotqa_reward,
    load_records,
    normalize_answer,
    parse_action,
    reward_fn,
)
from erl.envs.registry import make_env
from erl.envs.retrieval import make_search
from erl.memory import ReflectionMemory
from erl.models.tiny import build_tiny_model, build_tiny_tokenizer
from erl.rollout.scripted import ScriptedPolicy
from erl.workflow.erl_workflow import ErlWorkflow
from erl.workflow.factories import chat_agent_for

ROOT = Path(__file__).resolve().parents[1]
TOK = build_tiny_tokenizer()


def load_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- reward


def test_squad_normalisation():
    assert normalize_answer("The  Sella River.") == "sella river"
    assert normalize_answer("Vask & Sons") == "vask sons"  # "&" is punctuation
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert normalize_answer(None) == ""


@pytest.mark.parametrize(("pred", "gold", "f1", "reward"), [
    # "the Sella river" -> "sella river" (2 tokens), "Sella" -> "sella": 1 in common.
    # P = 1/1, R = 1/2, F1 = 2 * 1 * 0.5 / 1.5 = 2/3 >= 0.3 -> reward 2/3.
    ("Sella", "the Sella river", 2 / 3, 2 / 3),
    # "river sella in estmark" (4) vs "sella river" (2): 2 in common. P = 2/4, R = 2/2,
    # F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
    ("the river Sella in Estmark", "the Sella river", 2 / 3, 2 / 3),
    # "kelmarsh city hall museum" (4) vs "kelmarsh" (1): P = 1/4, R = 1, F1 = 0.5 / 1.25 = 0.4.
    ("Kelmarsh city hall museum", "Kelmarsh", 0.4, 0.4),
    # "old harbour of kelmarsh in veldt republic" (7) vs "kelmarsh": P = 1/7, R = 1,
    # F1 = (2/7) / (8/7) = 0.25 < 0.3 -> reward 0.
    ("the old harbour of Kelmarsh in the Veldt Republic", "Kelmarsh", 0.25, 0.0),
    # "sella sella" vs "sella river": overlap counts min(2, 1) = 1. P = 1/2, R = 1/2, F1 = 0.5.
    ("Sella Sella", "the Sella river", 0.5, 0.5),
    # Exact match after normalisation: reward 1.
    ("The Sella River.", "the Sella river", 1.0, 1.0),
    # yes/no: plain F1 of "yes it is" vs "yes" would be 2 * (1/3) * 1 / (4/3) = 0.5, but
    # HotpotQA's rule scores a yes/no answer only when it matches exactly.
    ("yes it is", "yes", 0.0, 0.0),
    ("no", "yes", 0.0, 0.0),
    ("", "Cadrevo", 0.0, 0.0),
])
def test_reward_hand_worked(pred, gold, f1, reward):
    got_reward, got_f1, em = hotpotqa_reward(pred, gold)
    assert got_f1 == pytest.approx(f1) and answer_f1(pred, gold) == pytest.approx(f1)
    assert got_reward == pytest.approx(reward) and em == (reward == 1.0)


def test_answer_extraction_and_reward_fn_feedback():
    assert extract_answer("so it is \\boxed{Cadrevo}.") == "Cadrevo"
    assert extract_answer("<answer> Pellam </answer> or \\boxed{x} then <answer>Saffra</answer>") == "x"
    assert extract_answer("I think answer[Thornby]") == "Thornby"
    assert extract_answer("  Thornby  ") == "Thornby"
    task = {"answer": "the Sella river"}
    reward, feedback = reward_fn(task, "It is \\boxed{Sella}")
    assert reward == pytest.approx(2 / 3) and "partly right" in feedback and "river" not in feedback
    assert reward_fn(task, "\\boxed{}")[0] == 0.0
    assert reward_fn(task, "\\boxed{The Sella River}") == (1.0, 'The answer "The Sella River" is exactly right '
                                                                 "(token F1 1.00). Reward: 1")


# ---------------------------------------------------------------- data and search


def test_fixture_is_what_its_script_makes_and_is_multi_hop():
    make = load_file(ROOT / "tests" / "fixtures" / "make_hotpotqa_mini.py", "make_hotpotqa_mini")
    assert json.loads(FIXTURE.read_text()) == make.build()
    records = load_records(str(FIXTURE))
    assert len(records) == 30
    for r in records:
        titles = {t for t, _ in r["context"]}
        gold = {t for t, _ in r["supporting_facts"]}
        assert len(gold) >= 2 and gold <= titles and len(titles - gold) == 3  # 3 distractors
        paragraphs = dict(r["context"])
        for title, sent in r["supporting_facts"]:
            assert sent < len(paragraphs[title])
        if r["type"] == "bridge":  # the answer is in the second hop's paragraph, not the first's
            first, second = (t for t, _ in r["supporting_facts"])
            answer = normalize_answer(r["answer"])
            assert answer in normalize_answer(" ".join(paragraphs[second]))
            assert answer not in normalize_answer(" ".join(paragraphs[first]))


def test_hugging_face_layout_files_load_the_same(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": r["id"], "question": r["question"], "answer": r["answer"], "type": r["type"], "level": r["level"],
             "supporting_facts": {"title": [t for t, _ in r["supporting_facts"]],
                                  "sent_id": [i for _, i in r["supporting_facts"]]},
             "context": {"title": [t for t, _ in r["context"]], "sentences": [s for _, s in r["context"]]}}
            for r in load_records(str(FIXTURE))[:4]]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    expected = load_records(str(FIXTURE))[:4]
    assert load_records(str(tmp_path / "d.jsonl")) == expected == load_records(str(tmp_path / "d.parquet"))
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "no id"}]))
    with pytest.raises(ConfigError, match="_id"):
        load_records(str(tmp_path / "bad.json"))


def test_bm25_search_over_the_fixture():
    search = hotpotqa.get_search(HotpotQAEnv.make_tasks(1)[0])
    hits = search("founder of Kell Dispensary").splitlines()
    assert hits[1].startswith("[1] Kell Dispensary: Kell Dispensary is a pharmacy company")
    assert len(hits) <= 1 + 3  # header + top_k passages
    assert search("") == 'No results for "".' and search("the of a").startswith("No results")
    assert search("qwxzv") == 'No results for "qwxzv".'
    assert search(None).startswith("No results") and search("x" * 10_000).startswith("No results")



def test_bm25_keeps_jax_off_the_gpu(monkeypatch):
    """Where jax is installed, bm25s runs jax at import and by default at every search; jax on a
    GPU then reserves 75% of its memory (a GPU run of the sixth session lost a co-tenant to it).
    The retriever keeps jax on the CPU (unless the user chose) and searches with numpy."""
    from erl.envs.retrieval import BM25Retriever

    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    r = BM25Retriever([("A", "alpha beta"), ("B", "gamma delta")])
    assert os.environ["JAX_PLATFORMS"] == "cpu"
    seen = {}
    real = r.index.retrieve
    monkeypatch.setattr(r.index, "retrieve", lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    assert [i for i, _ in r.search("gamma", 1)] == [1]
    assert seen["backend_selection"] == "numpy"
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    BM25Retriever([("A", "alpha")])
    assert os.environ["JAX_PLATFORMS"] == "cuda"

def test_dense_retriever_ranks_by_cosine():
    vocab = ["river", "company", "born", "lens"]

    def encode(texts):  # a bag-of-words "embedding" over four words
        return np.array([[t.lower().count(w) for w in vocab] for t in texts], dtype=float)

    docs = [("A", "A lens company."), ("B", "Born by the river, born twice."), ("C", "The river.")]
    search = make_search(docs, "dense", top_k=2, encode=encode)
    # query "born river" -> [0, 0, 1, 0] + [1, 0, 0, 0] = [1, 0, 1, 0] / sqrt2. Doc B = [1, 0, 2, 0] / sqrt5:
    # cos = 3 / sqrt10 = 0.95; C = [1, 0, 0, 0]: cos = 1 / sqrt2 = 0.71; A = [0, 1, 0, 1]: cos 0.
    assert [line[:5] for line in search("born river").splitlines()[1:]] == ["[1] B", "[2] C"]
    with pytest.raises(ConfigError, match="embedding_model"):
        HotpotQAEnv.validate_params({"retriever": "dense"})


@pytest.mark.parametrize(("params", "field"), [
    ({"top_k": 0}, "top_k"), ({"retriever": "tfidf"}, "retriever"), ({"corpus": "nowhere.jsonl"}, "corpus"),
    ({"data_path": "/no/such.json"}, "data_path"), ({"max_turns": "8"}, "max_turns"), ({"colour": 1}, "colour"),
    ({"source": "web"}, "source"), ({"val_percent": 95}, "val_percent"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field):
        HotpotQAEnv.validate_params(params)


def test_tasks_split_disjoint_seeded_and_bounded(tmp_path):
    train, val = HotpotQAEnv.make_tasks(100, seed=0), HotpotQAEnv.make_tasks(100, seed=0, split="val")
    assert len(train) + len(val) == 30 and 0 < len(val) < 15
    assert not {t["task_id"] for t in train} & {t["task_id"] for t in val}
    assert HotpotQAEnv.make_tasks(100, seed=0) == train
    assert [t["task_id"] for t in HotpotQAEnv.make_tasks(100, seed=1)] != [t["task_id"] for t in train]
    assert len(HotpotQAEnv.make_tasks(3)) == 3 and json.loads(json.dumps(train[0])) == train[0]
    own = HotpotQAEnv.make_tasks(2, corpus="task")[0]  # the distractor setting: search its own context only
    assert {line.split(":")[0][4:] for line in hotpotqa.get_search(own)("city").splitlines()[1:]} <= \
        {t for t, _ in own["context"]}
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"title": "Zed", "text": "Zed is a comet."}) + "\n"
                      + json.dumps({"contents": '"Ypsilon"\nYpsilon is a moon.'}) + "\n")
    task = HotpotQAEnv.make_tasks(1, corpus=str(corpus))[0]
    assert hotpotqa.get_search(task)("moon").splitlines()[1] == "[1] Ypsilon: Ypsilon is a moon."
    (tmp_path / "bad.jsonl").write_text('{"title": "A", "text": "fine"}\n{oops\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2 is not valid JSON"):
        make_env(HotpotQAEnv.make_tasks(1, corpus=str(tmp_path / "bad.jsonl"))[0])


# ---------------------------------------------------------------- the text env


def test_env_episode_every_branch():
    task = next(t for t in HotpotQAEnv.make_tasks(30) if t["answer"] == "the Sella river")
    env = make_env(dict(task, max_turns=4))
    assert env.reset()[0] == f"Question: {task['question']}"
    obs, r, done, info = env.step("I will search[" + task["question"] + "]")
    assert r == 0.0 and not done and info["action"] == "search" and obs.startswith("Results for")
    obs, r, done, info = env.step("no idea")
    assert not info["valid"] and obs.startswith('Invalid action "no idea"') and not done
    obs, r, done, info = env.step("answer[Sella]")  # F1 2/3 (see test_reward_hand_worked)
    assert done and r == pytest.approx(2 / 3) and not info["success"] and "partly right" in obs
    assert env.step("answer[x]")[1:3] == (0.0, True)  # after the end
    env.reset()
    assert env.step("answer[]")[:3] == ("The answer is empty. Reward: 0", 0.0, True)
    env.reset()
    assert env.step("Answer[The Sella River]")[1] == 1.0
    env = make_env(dict(task, max_turns=1))
    obs, r, done, _ = env.step("search[Sella]")
    assert done and r == 0.0 and obs.endswith("Out of turns without an answer. Reward: 0")
    assert parse_action("search[a] then finish[b]") == ("answer", "b") and parse_action(b"\xff") == (None, "")


def test_text_env_runs_the_erl_loop():
    task = HotpotQAEnv.make_tasks(30)[0]

    def script(prompt, i):
        if "You are a coach" in prompt:
            return "<prompt>Search before answering.</prompt>"
        if "Results for" not in prompt:
            return f"search[{task['question']}]"
        return f"answer[{task['answer']}]" if "Search before answering" in prompt else "answer[Nowhere]"

    wf = ErlWorkflow(chat_agent_for, make_env, ScriptedPolicy(TOK, script), ErlConfig())
    episode = asyncio.run(wf.run(task, f"{task['task_id']}:0"))
    first, reflection, second = episode.trajectories[:3]
    assert (first.reward, reflection.reward, second.reward) == (0.0, 1.0, 1.0)
    assert "search[query]" in TOK.decode(first.info["prompt_ids"])  # the action interface, nothing else


# ---------------------------------------------------------------- LangGraph example and training


def example():
    sys.path.insert(0, str(ROOT / "examples" / "hotpotqa_langgraph"))
    try:
        return load_file(ROOT / "examples" / "hotpotqa_langgraph" / "train_local.py", "hotpotqa_train_local")
    finally:
        sys.path.pop(0)


def test_langgraph_example_agent_through_the_adapter():
    task = next(t for t in HotpotQAEnv.make_tasks(30) if t["type"] == "bridge")

    def script(prompt, i):
        if "You are a coach" in prompt:
            return "<prompt>Search twice.</prompt>"
        if "<tool_response>" not in prompt:
            return '<tool_call>\n{"name": "search", "arguments": {"query": "' + task["question"] + '"}}\n</tool_call>'
        return "\\boxed{" + (task["answer"] if "Search twice" in prompt else "Nowhere") + "}"

    wf = ErlWorkflow(policy=ScriptedPolicy(TOK, script), runner=example().make_runner())
    episode = asyncio.run(wf.run(task, f"{task['task_id']}:0"))
    first, _, second = episode.trajectories[:3]
    assert first.reward == 0.0 and second.reward == 1.0 and second.info["answer"] == "\\boxed{" + task["answer"] + "}"
    assert "Results for" in first.steps[0].observation and '"name": "search"' in TOK.decode(first.info["prompt_ids"])


@pytest.mark.timeout(120)
def test_two_cpu_training_steps_on_the_fixture(tmp_path):
    from erl.trainers.local.config import LocalTrainerConfig
    from erl.trainers.local.run import train
    from erl.trainers.local.trainer import LocalTrainer

    # The text env through the trainer's config path (registry, params validation, eval).
    cfg = {"seed": 0, "resume": False,
           "erl": {"n_attempt": 2, "max_turns": 2, "max_new_tokens": 8, "max_reflection_tokens": 8,
                   "reflection_require_tag": False, "temperature": 1.0},
           "trainer": {"total_steps": 2, "tasks_per_step": 2, "lr": 1e-3, "micro_batch_size": 8, "eval_every": 0,
                       "eval_tasks": 2, "save_every": 0, "output_dir": str(tmp_path / "env"), "loggers": ["console"],
                       "progress": False, "max_context_tokens": 1024, "device": "cpu"},
           "env": {"name": "hotpotqa", "n_train": 8, "n_val": 2, "params": {"max_turns": 2}},
           "model": {"path": "tiny", "tiny": {"hidden": 32, "layers": 1, "heads": 2}}}
    last = train(cfg)
    assert last["attempt1/success"] >= 0.0 and np.isfinite(last["loss/grad_norm"])
    assert (tmp_path / "env" / "metrics.jsonl").read_text().count("\n") == 3  # eval at 0, steps 1 and 2
    # The LangGraph example agent through the local trainer's runner (what train_local.py does).
    tok = build_tiny_tokenizer()
    erl = ErlConfig(n_attempt=2, max_turns=2, max_new_tokens=8, max_reflection_tokens=8,
                    reflection_require_tag=False, temperature=1.0)
    tcfg = LocalTrainerConfig(tasks_per_step=1, lr=1e-3, micro_batch_size=8, device="cpu", loggers=["console"],
                              progress=False, output_dir=str(tmp_path / "lg"))
    trainer = LocalTrainer(build_tiny_model(tok, hidden=32, layers=1, heads=2), tok, HotpotQAEnv.make_tasks(8),
                           erl, tcfg, None, None, memory=ReflectionMemory(), runner=example().make_runner())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = [trainer.step() for _ in range(2)]
    assert all(m["tokens/trained"] > 0 and np.isfinite(m["loss/grad_norm"]) for m in metrics)
    assert trainer.step_count == 2 and trainer.policy.stats["sequences"] >= 2 * 2  # n episodes x steps
    if any(m["advantage/mean_abs"] > 0 for m in metrics):  # a reward difference moved the weights
        assert any(not p.equal(b) for p, b in zip(trainer.model.parameters(), before))


def test_hf_source_without_network_is_a_config_error_naming_the_file_way(monkeypatch):
    """source=hf with no network: the hub's connection error (an OSError) becomes one ConfigError that
    says to use a local file, not a traceback after the retries."""
    import datasets

    from erl.envs import hotpotqa

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'hotpotqa/hotpot_qa' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    hotpotqa.load_hf.cache_clear()
    with pytest.raises(ConfigError, match=r"source=hf: could not load hotpot_qa \(distractor, train\): ConnectionError: "
                                          r"Couldn't reach .*use source=file with env.params.data_path"):
        hotpotqa.load_hf("hotpot_qa", "distractor", "train")
    hotpotqa.load_hf.cache_clear()


@pytest.mark.timeout(120)
def test_langgraph_example_writes_its_run_to_out_and_refuses_one_there(tmp_path, capsys):
    """examples/hotpotqa_langgraph/train_local.py --out: one step's metrics line, curves and a checkpoint
    (--out had been accepted and nothing written there); a second run into it is refused."""
    out = tmp_path / "lg"
    main = example().main
    main(["--steps", "1", "--tasks-per-step", "1", "--out", str(out)])
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and "attempt1/success" in rows[0]
    assert (out / "curves.png").is_file() and (out / "checkpoints" / "step_1" / "model.safetensors").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--steps", "1", "--out", str(out)])
    assert "already holds a run" in capsys.readouterr().err
