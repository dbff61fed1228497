"""Per-step ERL metrics from episodes and rows. Pure: both trainers log exactly these names."""

from __future__ import annotations

from collections import defaultdict

from erl.core.reflection import clip
from erl.core.types import Episode, Segment, TokenSample, Trajectory


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Reward and success per segment, reflection rate and outcomes, memory use, distillation.

    Rates are over all episodes ("how often"), per-segment rewards over the episodes that
    reached that segment ("how well").
    """
    m: dict[str, float] = {"episodes": float(len(episodes))}
    if not episodes:
        return m
    col = defaultdict(list)
    for ep in episodes:
        for key, value in ep.metrics.items():
            col[key].append(float(value))
    m["attempt1/reward"] = _mean(col["r1"])
    m["attempt1/success"] = _mean(col["success1"])
    m["attempt2/reward"] = _mean(col["r2"])
    m["attempt2/success"] = _mean(col["success2"])
    m["attempt2/rate"] = _mean(col["attempt2"])
    m["reflection/rate"] = _mean(col["reflected"])
    reflected = sum(col["reflected"])
    m["reflection/parse_fail_rate"] = sum(col["reflection_parse_fail"]) / reflected if reflected else 0.0
    refl_rewards = [t.reward for ep in episodes for t in ep.trajectories if t.name == Segment.REFLECTION.value]
    m["reflection/reward"] = _mean(refl_rewards)
    # Improvement where a second attempt ran: how much the reflection helped.
    pairs = [(ep.metrics["r1"], ep.metrics["r2"]) for ep in episodes if ep.metrics.get("attempt2")]
    m["attempt2/gain"] = _mean([r2 - r1 for r1, r2 in pairs])
    m["memory/hits"] = _mean(col["memory_hits"])
    m["memory/stored"] = sum(col["memory_stored"])
    m["distill/episodes"] = sum(col["distilled"])
    m["episode/success"] = _mean([float(ep.is_correct) for ep in episodes])
    attempts = [t for ep in episodes for t in ep.trajectories if t.name in (Segment.ATTEMPT1.value, Segment.ATTEMPT2.value)]
    m["attempt/turns"] = _mean([float(t.info.get("turns", len(t.steps))) for t in attempts])
    # attempts whose agent raised (an adapter's agent: erl.agents.recorder.agent_error), scored 0
    m["attempt/agent_errors"] = _mean([float(bool(t.info.get("agent_exception"))) for t in attempts])
    return m


def sample_metrics(samples: list[TokenSample]) -> dict[str, float]:
    """Row and token counts per segment: what the update actually trained on."""
    m: dict[str, float] = {"rows": float(len(samples))}
    for seg in Segment:
        rows = [s for s in samples if s.segment == seg]
        m[f"{seg.value}/rows"] = float(len(rows))
        m[f"{seg.value}/tokens"] = float(sum(sum(s.response_mask) for s in rows))
    m["tokens/trained"] = float(sum(sum(s.response_mask) for s in samples))
    m["tokens/total"] = float(sum(len(s.prompt_ids) + len(s.response_ids) for s in samples))
    return m


def updated_tokens(step_metrics: dict[str, float]) -> float:
    """Tokens the update's passes ran over: all of the step's rows' tokens but those of rows without
    gradient, which a backend may skip (`train/idle_tokens`, the local trainer's)."""
    return step_metrics["tokens/total"] - step_metrics.get("train/idle_tokens", 0.0)


def first_attempt_metrics(attempts: list[Trajectory]) -> dict[str, float]:
    """Evaluation: first attempts only (no reflection, no memory), what the deployed model does."""
    return {"eval/success": _mean([float(t.info.get("success", False)) for t in attempts]),
            "eval/reward": _mean([t.reward for t in attempts]),
            "eval/turns": _mean([float(len(t.steps)) for t in attempts])}


def memory_store_metrics(stats: dict[str, float], step_metrics: dict[str, float]) -> dict[str, float]:
    """The memory store's counters as `memory/<k>`; a counter whose name this step's metrics
    already use (hits: per-episode mean this step) becomes `memory/total_<k>` (since the start)."""
    out = {}
    for k, v in stats.items():
        key = f"memory/{k}"
        out[key if key not in step_metrics else f"memory/total_{k}"] = float(v)
    return out


def advantage_mean_abs(advantages, samples: list[TokenSample]) -> float:
    """Mean |advantage| over the trained (mask-1) response tokens: the average the token-mean
    loss sees, so a long row weighs by its length. `advantages`: one scalar per row."""
    tokens = [sum(s.response_mask) for s in samples]
    if len(tokens) != len(advantages):
        raise ValueError(f"advantage_mean_abs: {len(advantages)} advantages for {len(tokens)} rows")
    total = sum(tokens)
    return sum(abs(float(a)) * n for a, n in zip(advantages, tokens)) / total if total else 0.0


def episode_record(ep: Episode, max_chars: int = 400) -> dict:
    """One episode as readable text (what the model wrote, what the env answered, rewards) for a
    run's samples file: the way to see *why* a curve moves, as TRL logs completions."""
    def cut(text: str | None) -> str | None:  # None stays None: a last turn has no observation
        return None if text is None else clip(text, max_chars)

    trajs = []
    for traj in ep.trajectories:
        first = traj.steps[0].messages if traj.steps else []
        user = [m.get("content", "") for m in first if m.get("role") == "user"]
        trajs.append({
            "name": traj.name, "reward": float(traj.reward),
            "prompt": cut(str(user[-1]) if user else None),
            "turns": [{"response": cut(s.response), "observation": cut(s.observation)}
                      for s in traj.steps],
        })
    return {"episode": ep.id, "task_id": ep.task.get("task_id"), "correct": bool(ep.is_correct), "trajectories": trajs}
