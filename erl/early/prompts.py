"""The chats that Early Experience trains on and samples with.

Every record is one chat whose last message (the assistant's) is the training target, so the
local trainer and verl's SFT dataset mask the same tokens. The policy's context for state s_i
is the env's system prompt and s_i as a user turn: what the RL agent sees at its first turn.
The grid games are Markov (the observation shows the whole state), so a single observation is
the state at every step; the RL agent's later turns carry the history as well.
"""

from __future__ import annotations

import re

from erl.core.reflection import render_reflection_request
from erl.core.types import Step, Trajectory
from erl.envs.base import ACTION_FORMAT, action_text
from erl.envs.registry import env_class

# What the policy is asked for a world-model record: the same system prompt and state as when
# acting (the parameters are shared), then the action whose outcome it must predict.
IWM_QUESTION = ("Suppose you reply {action}. What will the game show next? "
                "Reply with the next observation exactly as it will appear.")

RATIONALE_PROMPT = (
    "You are shown a game state and two possible actions with what the game showed after each.\n\n"
    "State:\n{state}\n\n"
    "Action {good}. The game then showed:\n{good_next}\n\n"
    "Action {alt}. The game then showed:\n{alt_next}\n\n"
    "In at most three sentences, give the reasoning a player should have in this state that leads "
    "to choosing {good} rather than {alt}: what the grid shows and where each move leads. "
    "Write it as your own thinking before acting; do not mention that you were shown the outcomes."
)


def system_prompt(task: dict) -> str:
    return env_class(task.get("env")).system_prompt(task)


def policy_messages(task: dict, state: str) -> list[dict]:
    return [{"role": "system", "content": system_prompt(task)}, {"role": "user", "content": state}]


def expert_messages(task: dict, state: str, action: str, fmt: str = ACTION_FORMAT) -> list[dict]:
    """IL: s_i -> a_i."""
    return policy_messages(task, state) + [{"role": "assistant", "content": action_text(action, fmt)}]


def iwm_messages(task: dict, state: str, action: str, next_state: str, fmt: str = ACTION_FORMAT) -> list[dict]:
    """IWM: (s_i, a_i^j) -> s_i^j."""
    question = IWM_QUESTION.format(action=action_text(action, fmt))
    return [{"role": "system", "content": system_prompt(task)},
            {"role": "user", "content": f"{state}\n\n{question}"},
            {"role": "assistant", "content": next_state}]


def rationale_messages(task: dict, state: str, good: str, good_next: str, alt: str, alt_next: str) -> list[dict]:
    """The prompt that asks the policy for c_i^j: why a_i beats a_i^j, given both outcomes."""
    text = RATIONALE_PROMPT.format(state=state, good=good, good_next=good_next, alt=alt, alt_next=alt_next)
    return [{"role": "system", "content": system_prompt(task)}, {"role": "user", "content": text}]


def clean_rationale(text: str, max_chars: int = 2000) -> str:
    """Action tags are removed: the SR target must end with exactly one, the expert's."""
    text = re.sub(r"<action>.*?</action>", "", str(text), flags=re.IGNORECASE | re.DOTALL)
    return " ".join(text.split())[:max_chars]


def reflection_messages(task: dict, state: str, reply: str, next_state: str, tag: str = "prompt") -> list[dict]:
    """ERL's own reflection request (erl.core.reflection) about a failed one-move attempt: the
    agent replied `reply` in `state` and the game showed `next_state`. The rehearsal records
    (early.reflections) pair it with the base model's answer, so that an imitation stage, which
    otherwise teaches the model to answer every prompt with a bare move, keeps writing reflections."""
    attempt = Trajectory(name="attempt1", steps=[Step(response=reply, observation=next_state)])
    return render_reflection_request(policy_messages(task, state), attempt, 0.0, tag=tag)


def sr_messages(task: dict, state: str, rationale: str, action: str, fmt: str = ACTION_FORMAT) -> list[dict]:
    """SR: s_i -> c_i^j followed by a_i."""
    return policy_messages(task, state) + [
        {"role": "assistant", "content": f"{rationale}\n{action_text(action, fmt)}"}]
