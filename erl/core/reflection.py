"""Reflection: render the request from a failed attempt, parse the model's answer.

Pure text functions. The model writes its reflection as a new piece of system prompt
(a "rulebook") inside <prompt>...</prompt>; anything else is a defined parse outcome,
never an exception, because it is untrusted model text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from erl.core.tags import last_tag_block
from erl.core.types import Trajectory

REFLECTION_SYSTEM = (
    "You are a coach. You study an agent's failed attempt at a task and write better "
    "instructions for its next attempt."
)

# Bounds keep the reflection prompt short whatever the trajectory holds.
MAX_FIELD_CHARS = 600
GUIDANCE_HEADER = "Guidance from an earlier attempt at this task:"


def clip(text: str | None, limit: int = MAX_FIELD_CHARS) -> str:
    """The text cut to `limit` characters, marked " [...]" where cut ("" for None)."""
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + " [...]"


def render_attempt(attempt: Trajectory) -> str:
    """The attempt turn by turn: what the agent said, what the environment answered."""
    lines = []
    for i, step in enumerate(attempt.steps, 1):
        lines.append(f"Turn {i}")
        lines.append(f"Agent: {clip(step.response.strip())}")
        if step.observation is not None:
            lines.append(f"Environment: {clip(step.observation)}")
    return "\n".join(lines) if lines else "(the agent took no turn)"


def render_task(messages: list[dict]) -> str:
    """What the agent was shown before its first move (system prompt and first user turn)."""
    parts = [f"[{m.get('role', '?')}] {clip(m.get('content', ''))}" for m in messages[:2]]
    return "\n".join(parts)


def render_reflection_request(
    task_messages: list[dict],
    attempt: Trajectory,
    reward: float,
    memory: list[str] | tuple[str, ...] = (),
    tag: str = "prompt",
) -> list[dict]:
    """Chat messages asking the model for a reflection on one failed attempt."""
    sections = [
        "An agent attempted a task and did not fully succeed.",
        "## Task\n" + render_task(task_messages),
        "## The attempt, turn by turn\n" + render_attempt(attempt),
        f"## Outcome\nReward: {reward:g}",
    ]
    if memory:
        listed = "\n".join(f"{i}. {clip(m)}" for i, m in enumerate(memory, 1))
        sections.append("## Instructions that led to success on similar tasks\n" + listed)
    sections.append(
        "Write instructions for the agent's next attempt: what the observations probably mean, "
        "what went wrong, and what to do instead. Keep them short. "
        f"Put the instructions inside <{tag}></{tag}>."
    )
    return [
        {"role": "system", "content": REFLECTION_SYSTEM},
        {"role": "user", "content": "\n\n".join(sections)},
    ]


def render_feedback_guidance(attempt: Trajectory, reward: float) -> str:
    """The `no_reflection` ablation: attempt 2 sees the raw first attempt instead of a reflection."""
    return f"Your previous attempt:\n{render_attempt(attempt)}\nReward: {reward:g}"


@dataclass(frozen=True)
class ReflectionParse:
    ok: bool
    text: str = ""
    error: str | None = None  # "missing_tag" | "unclosed_tag" | "empty" | "too_long"


def parse_reflection(text: str, tag: str = "prompt", max_chars: int = 2000,
                     require_tag: bool = True) -> ReflectionParse:
    """Extract the last complete <tag>...</tag> block.

    The last block wins because small models often echo the instruction (with an empty
    example tag) before answering. `require_tag=False` accepts the whole text when no tag
    is present (useful for tiny models that never learned the format).
    """
    text = "" if text is None else str(text)
    block = last_tag_block(text, f"<{tag}>", f"</{tag}>", ignore_case=True)
    if block is not None:
        body = block.strip()
    elif re.search(f"<{re.escape(tag)}>", text, flags=re.IGNORECASE) and require_tag:
        return ReflectionParse(False, error="unclosed_tag")
    elif require_tag:
        return ReflectionParse(False, error="missing_tag")
    else:
        body = re.sub(f"</?{re.escape(tag)}>", "", text, flags=re.IGNORECASE).strip()
    if not body:
        return ReflectionParse(False, error="empty")
    if len(body) > max_chars:
        return ReflectionParse(False, error="too_long")
    return ReflectionParse(True, text=body)


# Where attempt 2's agent reads the reflection. A runner may also pass a callable
# placement(messages, guidance) -> messages (erl.agents); configs name one of these.
PLACEMENTS = ("append_system", "replace_system", "first_user")


def apply_guidance(messages: list[dict], guidance: str | None, placement: str = "append_system") -> list[dict]:
    """Return a copy of `messages` that carries the guidance for attempt 2.

    `append_system` keeps the original system prompt (it holds the action interface) and
    adds the guidance under a header; `replace_system` is the reference code's choice;
    `first_user` puts it, under the header, at the top of the first user message (for agents
    whose system prompt is not theirs to extend; without a user message: append_system).
    """
    out = [dict(m) for m in messages]
    if not guidance:
        return out
    if placement == "first_user":
        for m in out:
            if m.get("role") == "user":
                m["content"] = f"{GUIDANCE_HEADER}\n{guidance}\n\n{m['content']}"
                return out
        placement = "append_system"
    if out and out[0].get("role") == "system":
        if placement == "replace_system":
            out[0]["content"] = guidance
        else:
            out[0]["content"] = f"{out[0]['content']}\n\n{GUIDANCE_HEADER}\n{guidance}"
    else:
        content = guidance if placement == "replace_system" else f"{GUIDANCE_HEADER}\n{guidance}"
        out.insert(0, {"role": "system", "content": content})
    return out


def place_guidance(messages: list[dict], guidance: str | None, placement) -> list[dict]:
    """apply_guidance, or a callable `placement(messages, guidance)` (a copy goes in and out)."""
    if guidance and callable(placement):
        return [dict(m) for m in placement([dict(m) for m in messages], guidance)]
    return apply_guidance(messages, guidance, placement)
