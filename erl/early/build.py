"""Build the Early Experience data: D_expert, D_rollout, and the IWM and SR records.

Alternatives are sampled from the current policy through the same async Policy interface as
RL rollouts (in the CLI the RL trainer's own rollout policy, erl.rollout.build.build_policy; any
Policy in code; ScriptedPolicy in tests), so requests from all states are batched together. A
sampled reply counts only when it parses to an action that is neither the expert's nor one
already chosen for that state; after `max_rounds` rounds the missing ones are drawn uniformly
from the unused actions and marked source="random" in rollout.jsonl (the manifest counts them),
so K is always met.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from erl.core.config import ConfigError, check_bools, check_keys
from erl.core.interfaces import SamplingParams
from erl.early import prompts
from erl.early.experts import ExpertStep, action_space, expert_trajectory, step_from
from erl.envs.base import parse_action
from erl.models.chat import ChatTokenizer

STAT_KEYS = ("tasks", "expert_states", "policy_replies", "replies_invalid", "replies_expert_action",
             "replies_duplicate", "alternatives_policy", "alternatives_random", "rationales_empty",
             "reflections_empty")


@dataclass
class BuildConfig:
    k: int = 3  # alternatives per expert state
    temperature: float = 1.0
    max_new_tokens: int = 16
    max_rounds: int = 4  # sampling rounds before the missing alternatives are drawn at random
    action_format: str = prompts.ACTION_FORMAT
    rationales: bool = True  # off: no sr.jsonl (IL and IWM need no generation beyond actions)
    rationale_max_tokens: int = 96
    rationale_temperature: float = 0.7
    # rehearsal: the policy's own reflections on each alternative's failed move (reflect.jsonl), mixed
    # into IL by stage=il_rehearse so that imitation does not erase the skill ERL needs
    reflections: bool = False
    reflection_max_tokens: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "max_new_tokens", "max_rounds", "rationale_max_tokens", "reflection_max_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"early.{name} must be an integer >= 1, got {v!r}")
        for name in ("temperature", "rationale_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"early.{name} must be a number >= 0, got {v!r}")
        check_bools("early", self, ("rationales", "reflections"))
        if "{action}" not in str(self.action_format):
            raise ConfigError(f"early.action_format must contain {{action}}, got {self.action_format!r}")


def check_k(tasks: list[dict], k: int) -> None:
    """K alternatives must exist besides the expert's action, for every env in the task list."""
    for env in sorted({t.get("env") for t in tasks}, key=str):
        n = len(action_space(env))
        if k > n - 1:
            raise ConfigError(f"early.k={k} but {env} has only {n - 1} actions besides the expert's "
                              f"({n} in all); choose k <= {n - 1}")


async def sample_alternatives(policy: Any, states: list[tuple[dict, ExpertStep]], cfg: BuildConfig,
                              stats: Counter) -> list[list[tuple[str, str]]]:
    """K distinct non-expert actions per state: [(action, source)], source "policy" or "random"."""
    chat = ChatTokenizer(policy.tokenizer)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    ids = [chat.prompt_ids(prompts.policy_messages(t, s.state)) for t, s in states]
    chosen: list[list[tuple[str, str]]] = [[] for _ in states]
    for _ in range(cfg.max_rounds):
        jobs = [i for i in range(len(states)) for _ in range(cfg.k - len(chosen[i]))]
        if not jobs:
            break
        gens = await asyncio.gather(*[policy.generate(ids[i], params) for i in jobs])
        for i, gen in zip(jobs, gens):
            task, step = states[i]
            # as the env would read the reply: with action_tag only a tagged action is a move
            action = parse_action(gen.text, action_space(task["env"]), require_tag=bool(task.get("action_tag")))
            stats["policy_replies"] += 1
            if action is None:
                stats["replies_invalid"] += 1
            elif action == step.action:
                stats["replies_expert_action"] += 1
            elif any(action == a for a, _ in chosen[i]):
                stats["replies_duplicate"] += 1
            else:
                chosen[i].append((action, "policy"))
    rng = random.Random(cfg.seed)
    for i, (task, step) in enumerate(states):
        unused = [a for a in action_space(task["env"]) if a != step.action and all(a != c for c, _ in chosen[i])]
        for action in rng.sample(unused, cfg.k - len(chosen[i])):
            chosen[i].append((action, "random"))
            stats["alternatives_random"] += 1
    stats["alternatives_policy"] += sum(src == "policy" for row in chosen for _, src in row)
    return chosen


async def write_rationales(policy: Any, rollouts: list[dict], tasks: dict[str, dict], cfg: BuildConfig,
                           stats: Counter) -> list[str]:
    chat = ChatTokenizer(policy.tokenizer)
    params = SamplingParams(max_new_tokens=cfg.rationale_max_tokens, temperature=cfg.rationale_temperature)
    asks = [chat.prompt_ids(prompts.rationale_messages(
        tasks[r["task_id"]], r["state"], prompts.action_text(r["expert_action"], cfg.action_format),
        r["expert_next_state"], prompts.action_text(r["action"], cfg.action_format), r["next_state"]))
        for r in rollouts]
    gens = await asyncio.gather(*[policy.generate(a, params) for a in asks])
    texts = [prompts.clean_rationale(g.text) for g in gens]
    stats["rationales_empty"] += sum(not t for t in texts)
    return texts


async def write_reflections(policy: Any, rollouts: list[dict], tasks: dict[str, dict], cfg: BuildConfig,
                            stats: Counter) -> list[list[dict]]:
    """One rehearsal chat per alternative: ERL's reflection request about that move, answered by
    the policy (only alternatives that did not reach the goal: a reflection follows a failure)."""
    chat = ChatTokenizer(policy.tokenizer)
    params = SamplingParams(max_new_tokens=cfg.reflection_max_tokens, temperature=cfg.rationale_temperature)
    asks = [prompts.reflection_messages(tasks[r["task_id"]], r["state"], prompts.action_text(r["action"], cfg.action_format),
                                        r["next_state"]) for r in rollouts]
    gens = await asyncio.gather(*[policy.generate(chat.prompt_ids(a), params) for a in asks])
    texts = [" ".join(g.text.split()) for g in gens]
    stats["reflections_empty"] += sum(not t for t in texts)
    return [a + [{"role": "assistant", "content": t}] if t else [] for a, t in zip(asks, texts)]


async def build_records(tasks: list[dict], policy: Any, cfg: BuildConfig) -> tuple[dict[str, list[dict]], dict]:
    """All records by kind ("expert", "rollout", "iwm", "sr") and the build's counts.
    Every input problem is raised before the policy is asked anything."""
    if not tasks:
        raise ConfigError("early experience: no tasks to build from")
    check_k(tasks, cfg.k)
    fmt = cfg.action_format
    experts = {task["task_id"]: expert_trajectory(task) for task in tasks}
    states = [(task, step) for task in tasks for step in experts[task["task_id"]]]
    stats: Counter = Counter({k: 0 for k in STAT_KEYS})  # every count present, zeros included
    stats.update(tasks=len(tasks), expert_states=len(states))
    alternatives = await sample_alternatives(policy, states, cfg, stats)
    out: dict[str, list[dict]] = {"expert": [], "rollout": [], "iwm": [], "sr": [], "reflect": []}
    by_id = {t["task_id"]: t for t in tasks}
    for (task, step), alts in zip(states, alternatives):
        key = {"task_id": task["task_id"], "env": task["env"], "step": step.index}
        out["expert"].append({"kind": "expert", **key, **{k: v for k, v in asdict(step).items() if k != "index"},
                              "messages": prompts.expert_messages(task, step.state, step.action, fmt)})
        prefix = [s.action for s in experts[task["task_id"]][: step.index]]
        for action, source in alts:
            nxt, done, info = step_from(task, prefix, action, step.state)
            out["rollout"].append({"kind": "rollout", **key, "state": step.state, "expert_action": step.action,
                                   "expert_next_state": step.next_state, "action": action, "next_state": nxt,
                                   "done": done, "end": info.get("end"), "source": source})
            out["iwm"].append({"kind": "iwm", **key, "action": action,
                               "messages": prompts.iwm_messages(task, step.state, action, nxt, fmt)})
    if cfg.rationales:
        texts = await write_rationales(policy, out["rollout"], by_id, cfg, stats)
        for r, text in zip(out["rollout"], texts):
            if text:
                task = by_id[r["task_id"]]
                out["sr"].append({"kind": "sr", "task_id": r["task_id"], "env": r["env"], "step": r["step"],
                                  "action": r["expert_action"], "alt_action": r["action"], "rationale": text,
                                  "messages": prompts.sr_messages(task, r["state"], text, r["expert_action"], fmt)})
    if cfg.reflections:
        failed = [r for r in out["rollout"] if r["end"] != "success"]
        chats = await write_reflections(policy, failed, by_id, cfg, stats)
        out["reflect"] = [{"kind": "reflect", "task_id": r["task_id"], "env": r["env"], "step": r["step"],
                           "alt_action": r["action"], "messages": m} for r, m in zip(failed, chats) if m]
    stats.update({f"rows_{k}": len(v) for k, v in out.items()})
    return out, dict(stats)


BUILD_KEYS = ("env", "model", "erl", "early", "seed", "out", "overwrite", "tasks", "split", "n_tasks", "device",
              "gen_batch_size", "rollout_engine")


def build(cfg: dict) -> dict:
    """`erl-early build`: tasks (generated like the RL run's, or a task file), the model from
    `model:` as the policy (the RL trainer's rollout engine: build_policy), records written to
    `out`. Returns the manifest."""
    import torch

    from erl.early.data import check_out, write_dataset
    from erl.envs.base import load_tasks
    from erl.envs.registry import make_tasks, validate_env_params
    from erl.rollout.build import build_policy
    from erl.trainers.local.run import check_model_section, load_policy_model, pick_device

    cfg = check_keys("erl-early build config", cfg, BUILD_KEYS)
    early = BuildConfig(**check_keys("early", cfg.get("early"), BuildConfig))
    check_model_section(dict(cfg.get("model") or {}))
    env = dict(cfg.get("env") or {})
    params = dict(env.get("params") or {})
    validate_env_params(env.get("name"), params)
    seed = int(cfg.get("seed", 0))
    if cfg.get("tasks"):
        tasks = load_tasks(cfg["tasks"])
    else:
        n = cfg.get("n_tasks")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n_tasks must be an integer >= 1, got {n!r}")
        tasks = make_tasks(env["name"], n, seed=seed, split=str(cfg.get("split", "train")), **params)
    for t in tasks:  # every bad input is reported before the model is loaded
        action_space(t.get("env"))
    check_k(tasks, early.k)
    out = cfg.get("out")
    if not out:
        raise ConfigError("out: the dataset folder is not set")
    check_bools("", cfg, ("overwrite",))
    check_out(out, bool(cfg.get("overwrite")))
    device = pick_device(str(cfg.get("device", "auto")))
    torch.manual_seed(seed)
    # sampling needs no adapters: LoRA (on in the default model config) would only slow generation
    model, tok = load_policy_model({**cfg["model"], "lora": {"enabled": False}}, device, seed)
    policy = build_policy(model, tok, str(cfg.get("rollout_engine", "auto")),
                          max_batch_size=int(cfg.get("gen_batch_size", 64)))
    records, stats = asyncio.run(build_records(tasks, policy, early))
    manifest = {"counts": stats, "early": asdict(early), "env": env, "model": cfg["model"], "seed": seed,
                "tasks": cfg.get("tasks") or f"make_tasks({env['name']}, n={len(tasks)}, split={cfg.get('split')})"}
    write_dataset(out, records, manifest, overwrite=bool(cfg.get("overwrite")))
    return manifest
