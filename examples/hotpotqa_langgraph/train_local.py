"""Train the LangGraph search agent (agent.py) with ERL on the local trainer.

    python examples/hotpotqa_langgraph/train_local.py                      # tiny random model, fixture, CPU
    python examples/hotpotqa_langgraph/train_local.py --model /models/Qwen3-4B-Instruct-2507 \
        --data /data/hotpot_train_v1.1.json --steps 50 --device cuda

The ERL part is the `runner` line: the graph is built around the trainer's policy, the
reflection reaches attempt 2 through its system prompt, and the final \\boxed{} answer is
scored with HotpotQA's reward (exact match 1, else F1 if >= 0.3, else 0). The run goes to --out:
metrics.jsonl, curves.png and a checkpoint after the last step (an --out that holds a run is refused).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent import build_agent

from erl.agents.langgraph import LangGraphAttemptRunner
from erl.core.config import ErlConfig
from erl.envs import hotpotqa
from erl.memory import ReflectionMemory
from erl.tracking import Tracker
from erl.trainers.local.config import LocalTrainerConfig
from erl.trainers.local.run import load_policy_model, pick_device
from erl.trainers.local.trainer import LocalTrainer


def make_runner() -> LangGraphAttemptRunner:
    # The graph is the user's, unchanged; its search tool is the task's corpus.
    return LangGraphAttemptRunner(lambda model, task: build_agent(model, hotpotqa.get_search(task)),
                                  reward_fn=hotpotqa.reward_fn)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny, a registry name or a Hugging Face folder")
    ap.add_argument("--data", default=None, help="HotpotQA .json/.jsonl/.parquet (default: the fixture)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tasks-per-step", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="outputs/hotpotqa-langgraph")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if (out / "metrics.jsonl").exists():
        ap.error(f"--out {out} already holds a run; choose another folder")

    params = {"data_path": args.data} if args.data else {}
    train_tasks = hotpotqa.HotpotQAEnv.make_tasks(256, seed=0, split="train", **params)
    erl = ErlConfig(n_attempt=2, max_turns=4, max_new_tokens=128, max_reflection_tokens=128,
                    reflection_require_tag=args.model != "tiny")
    cfg = LocalTrainerConfig(total_steps=args.steps, tasks_per_step=args.tasks_per_step, lr=1e-5,
                             micro_batch_size=4, device=args.device, output_dir=args.out, loggers=["console"])
    model, tokenizer = load_policy_model({"path": args.model}, pick_device(args.device), seed=0)
    trainer = LocalTrainer(model, tokenizer, train_tasks, erl, cfg, agent_factory=None, env_factory=None,
                           memory=ReflectionMemory(), runner=make_runner())
    trainer.tracker = Tracker(out, ["console"], title=f"hotpotqa | erl | LangGraph agent | {args.model}")
    metrics: dict = {}
    for _ in range(args.steps):
        metrics = trainer.step()
        trainer.tracker.log(trainer.step_count, metrics)  # metrics.jsonl, curves.png
        print(f"step {trainer.step_count}: success attempt1 {metrics.get('attempt1/success', 0):.2f} "
              f"attempt2 {metrics.get('attempt2/success', float('nan')):.2f} "
              f"loss {metrics.get('loss/total', float('nan')):.4f} ({metrics['time/step']:.1f} s)")
    trainer.tracker.close()
    print(f"wrote {out / 'metrics.jsonl'}, {out / 'curves.png'} and {trainer.save_checkpoint()}")
    return metrics


if __name__ == "__main__":
    main()
