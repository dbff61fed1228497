"""The console entry points (erl-train, erl-eval, ...).

OpenMP threads that wait for work sleep instead of spinning (unless the user chose otherwise):
torch's default (spin) is only fast on cores nobody else uses. With other work on a 2-core
machine a spinning thread burns the core its partner needs, and the 2-thread decode step of
SmolLM2-135M took 1.2-2.9 s instead of 0.06-0.25 s (docs/cpu_rollout_bench_noamx.txt;
`python benchmarks/rollout.py --wait-policies ACTIVE,PASSIVE`).
OpenMP reads this once, when torch loads it, so it is set before anything imports torch.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
