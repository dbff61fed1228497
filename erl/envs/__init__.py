"""Text environments (FrozenLake, Sokoban, HotpotQA) and their task files.

Env classes load lazily through erl.envs.registry (FrozenLakeEnv, SokobanEnv live in
erl.envs.frozenlake and erl.envs.sokoban).
"""

from erl.envs.base import GridEnv, TaskEnv, load_tasks, parse_action, write_tasks
from erl.envs.registry import env_class, make_env, make_tasks, register_env, validate_env_params

__all__ = ["GridEnv", "TaskEnv", "env_class", "load_tasks", "make_env", "make_tasks", "parse_action",
           "register_env", "validate_env_params", "write_tasks"]
