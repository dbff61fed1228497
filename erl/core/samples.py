"""Episode -> training rows. One row per segment sample, token-exact, masks on model tokens only."""

from __future__ import annotations

from dataclasses import replace

from erl.core.types import Episode, Segment, Step, TokenSample, TokenSequence, Trajectory


def trajectory_to_sequences(traj: Trajectory) -> list[TokenSequence]:
    """Merge a multi-turn trajectory into as few token sequences as its prompts allow.

    A step whose prompt extends the previous (prompt + response) continues the same
    sequence: the extra prompt tokens (env observation, template glue) enter the response
    with mask 0, the new response with mask 1. A step whose prompt does not extend it
    (an agent that rewrote its history) starts a new sequence, so nothing is trained on a
    context the model never saw.
    """
    seqs: list[TokenSequence] = []
    for step in traj.steps:
        if not step.response_ids:
            continue
        if seqs:
            cur = seqs[-1]
            full = cur.prompt_ids + cur.response_ids
            if step.prompt_ids[: len(full)] == full:
                glue = step.prompt_ids[len(full):]
                cur.response_ids += glue + list(step.response_ids)
                cur.response_mask += [0] * len(glue) + [1] * len(step.response_ids)
                cur.logprobs += [0.0] * len(glue) + list(step.logprobs)
                continue
        seqs.append(TokenSequence(
            prompt_ids=list(step.prompt_ids),
            response_ids=list(step.response_ids),
            response_mask=[1] * len(step.response_ids),
            logprobs=list(step.logprobs),
        ))
    return seqs


def rebase_steps(steps: list[Step], old_prefix: list[int], new_prefix: list[int]) -> list[Step]:
    """Swap the leading prompt tokens of every step (attempt 2's prompt with D -> plain x).

    A step that starts a new sequence (its agent rewrote the chat) carries its own pair in
    `info["plain_prompt_ids"]`: its prompt and the later steps that extend it are re-based
    from it. Steps whose prompt starts with neither are dropped: their context cannot be
    rewritten without the reflection, so they are not distilled.
    """
    out = []
    for s in steps:
        if "plain_prompt_ids" in s.info:
            old_prefix, new_prefix = s.prompt_ids, s.info["plain_prompt_ids"]
        n = len(old_prefix)
        if list(s.prompt_ids[:n]) == list(old_prefix):
            info = {k: v for k, v in s.info.items() if k != "plain_prompt_ids"}
            out.append(replace(s, prompt_ids=list(new_prefix) + list(s.prompt_ids[n:]), info=info))
    return out


def episode_to_samples(episode: Episode) -> list[TokenSample]:
    """Flatten the segment trajectories of an episode into training rows.

    Each trajectory's reward is already the segment's reward (attempt1: r1; reflection,
    attempt2, distill: r2), set by the workflow through `erl.core.gating.segment_reward`.
    Trajectories with other names (tools, sub-agents) are not trained.
    """
    segments = {s.value: s for s in Segment}
    task_id = str(episode.task.get("task_id", episode.id.split(":")[0]))
    rows: list[TokenSample] = []
    for traj in episode.trajectories:
        seg = segments.get(traj.name)
        if seg is None:
            continue
        for seq in trajectory_to_sequences(traj):
            rows.append(TokenSample(
                prompt_ids=seq.prompt_ids, response_ids=seq.response_ids,
                response_mask=seq.response_mask, logprobs=seq.logprobs,
                segment=seg, task_id=task_id, episode_id=episode.id, reward=float(traj.reward),
            ))
    return rows
