"""The engine's compiled code: inductor options, the graph count the benchmark reports, and compiled
functions whose kernels do not depend on the order in which a process met its shapes."""

from __future__ import annotations

from typing import Any


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


class FirstShapes:
    """A torch.compile'd function whose graphs, and the kernels inductor picks for them, are the
    same in every process whatever shapes it met first, so that a run resumed in a new process
    samples what the original process sampled (docs/gpu/verl_in_workers: with the compiled regions
    it did not). Under torch.compile's default a function's first call compiles a graph static in
    every size and a later call of other sizes a dynamic one, whose kernels inductor configures
    from that call's sizes (and may time on the device); which graph, and which kernel, served a
    shape then followed the process's history. Here the first call of each kind (dtypes, devices,
    which leading sizes are 1, everything else about the arguments, grad mode and autocast) is
    preceded by a call on zeros of fixed leading sizes (`sizes`, marked dynamic), so that every
    process builds the same dynamic graph from the same sizes, first. Tensors of two or more
    dimensions are [n, T, ...], whose first two sizes vary (decode rows, packed prefill tokens;
    size 1 stays specialised); other arguments are taken as they are. `fn` must be free of side
    effects: it runs once more, on the zeros."""

    def __init__(self, fn: Any, sizes: tuple[int, int] = (512, 4096), both: tuple[int, int] = (8, 256)):
        self.fn, self.sizes, self.both = fn, sizes, both  # both: when n and T both exceed 1 (a few short rows)
        self.kinds: set = set()

    def __call__(self, *args: Any) -> Any:
        import torch

        kind = (tuple(_kind(a) for a in args), torch.is_grad_enabled(),
                tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cuda", "cpu")))
        # never inside a CUDA graph's capture (its eager run, the same kind, came first)
        if kind not in self.kinds and not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            self.kinds.add(kind)
            self.fn(*(self._zeros(a) if isinstance(a, torch.Tensor) and a.dim() > 1 else a for a in args))
        return self.fn(*args)

    def _zeros(self, x: Any) -> Any:
        """Zeros of x's dtype, device and layout, its leading sizes (those above 1) fixed and dynamic."""
        import torch

        fixed = self.both if min(x.shape[:2]) > 1 else self.sizes
        shape = [fixed[i] if i < 2 and s > 1 else s for i, s in enumerate(x.shape)]
        strides, step = [0] * x.dim(), 1
        for i in reversed(_layout(x)):  # dense, in x's order of strides
            strides[i], step = step, step * shape[i]
        zeros = torch.empty_strided(shape, strides, dtype=x.dtype, device=x.device).zero_()
        for i in range(2):
            if shape[i] > 1:
                torch._dynamo.maybe_mark_dynamic(zeros, i)
        return zeros


def _kind(a: Any) -> Any:
    """What of an argument decides its graph (torch.compile's guards), its leading sizes aside but
    for whether they are 1. A NamedTuple (a layer's weights): its tensors' dtypes and shapes (their
    device is the activations'), its other fields."""
    import torch

    if isinstance(a, torch.Tensor):
        s = a.shape
        return a.dtype, a.device, a.requires_grad, tuple(n == 1 for n in s[:2]), s[2:], a.is_contiguous() or _layout(a)
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        return tuple((x.dtype, x.shape) if isinstance(x, torch.Tensor) else x for x in a)
    return a


def _layout(x: Any) -> tuple[int, ...]:
    """x's dimensions from the largest stride to the smallest."""
    return tuple(sorted(range(x.dim()), key=lambda i: -x.stride(i)))


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
