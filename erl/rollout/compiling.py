"""The engine's compiled decode step: inductor options and the graph count the benchmark reports."""

from __future__ import annotations


def compile_options(compile: bool | str, eager_casts: bool) -> dict:
    """torch.compile's inductor options for a `compile` mode (True: "default"), plus eager's
    precision casts: fused kernels otherwise keep bf16 intermediates in fp32, and the sampled
    tokens' log-probs drift from the trainer's eager forward (2.9e-2 nats on an H200)."""
    import torch._inductor

    mode = compile if isinstance(compile, str) else "default"
    check_mode(mode)
    return {**torch._inductor.list_mode_options()[mode], **({"emulate_precision_casts": True} if eager_casts else {})}


def compiled(forward, compile: bool | str, eager_casts: bool):
    """torch.compile of the decode step. dynamic=None: the first key length compiles a static
    graph, the next one a graph with a symbolic length that serves every later bucket; CUDA
    graphs (reduce-overhead) are then recorded per (rows, key length, capacity) bucket, so
    dynamo may keep up to 256 of them."""
    import torch

    options = compile_options(compile, eager_casts)
    allow_recompiles(256)
    return torch.compile(forward, options=options)


def allow_recompiles(n: int) -> None:
    """Dynamo's per-function recompile limit raised to at least `n`, for the whole process (it is
    one global setting; its older name too): past it dynamo runs the function eagerly."""
    import torch

    dyn = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dyn, name):
            setattr(dyn, name, max(getattr(dyn, name), n))


def check_mode(mode: str) -> None:
    """A ValueError unless `mode` is one of torch.compile's modes (torch's own list): the engine
    and the trainer's config (trainer.rollout_compile) refuse a misspelt mode by this one check."""
    from torch._inductor import list_mode_options

    if mode not in list_mode_options():
        raise ValueError(f"compile mode {mode!r} is not one of {sorted(list_mode_options())}")


def graph_count() -> int:
    """Graphs torch.compile has built in this process (each compile or recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
