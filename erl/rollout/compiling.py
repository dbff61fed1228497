"""The engine's compiled decode step: inductor options and the graph count the benchmark reports."""

from __future__ import annotations


def compile_options(compile: bool | str, eager_casts: bool) -> dict:
    """torch.compile's inductor options for a `compile` mode (True: "default"), plus eager's
    precision casts: fused kernels otherwise keep bf16 intermediates in fp32, and the sampled
    tokens' log-probs drift from the trainer's eager forward (2.9e-2 nats on an H200)."""
    import torch._inductor

    mode = compile if isinstance(compile, str) else "default"
    table = torch._inductor.list_mode_options()
    if mode not in table:
        raise ValueError(f"RolloutEngine: compile mode {mode!r} is not one of {sorted(table)}")
    return {**table[mode], **({"emulate_precision_casts": True} if eager_casts else {})}


def graph_count() -> int:
    """Graphs torch.compile has built in this process (each compile or recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
