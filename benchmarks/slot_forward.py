"""One decode step (a recorded CUDA graph) and one eager prefill of the engine's slot forward
(erl.rollout.kv.SlotModel), side by side: with dense masked decode attention, with varlen
decode attention (the engine's default on CUDA), and with candidates for it (FlashAttention-2,
FlexAttention, the forward compiled, the layers' work around attention compiled). Kernels a forward and the costliest of them, the host's
time to launch, the GPU's time, and the logits' distance from a float32 forward.

    python benchmarks/slot_forward.py --variants "varlen decode,flex varlen"   # some of VARIANTS

    python benchmarks/slot_forward.py                  # random SmolLM2-135M, bf16 autocast, CUDA
    python benchmarks/slot_forward.py --device cpu --rows 16 --prefill-rows 2
    python benchmarks/slot_forward.py --variants "regions flex" --packed-trace   # + one packed prefill's host calls

The rollout of the local trainer is bound by the host (docs/gpu/prefill_overlap: the GPU busy ~35%
of an ERL collect): a decode graph's replay costs the host ~1.3 ms per thousand nodes, an eager
prefill its kernels' launches, so kernels a forward are host time on every step. The model is
the local trainer's rollout copy: linear weights in bf16 (erl.rollout.merged.cast_linears), run
under bf16 autocast, 1,024 slots of 1,024 positions.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from erl.rollout.fused import fuse_projections
from erl.rollout.kv import SlotModel
from erl.rollout.merged import cast_linears
from erl.rollout.regions import compiled_regions

sys.path.insert(0, str(Path(__file__).parent))
from rollout import SMOLLM2_135M, sync  # the benchmark next to this one

VIEWS = {"view", "_unsafe_view", "t", "unsqueeze", "slice", "transpose", "expand", "select", "reshape",
         "alias", "as_strided", "detach", "split", "unbind", "squeeze", "_to_copy", "empty_like"}


class Kernels(TorchDispatchMode):
    """Counts the ops of a forward that run a kernel (views and no-op casts do not)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.n += name not in VIEWS or (name == "_to_copy" and out.dtype != args[0].dtype)
        return out


def inputs(rows: int, width: int, slots: int, cap: int, device, seed: int) -> tuple:
    """(ids, pos, rows, write, keys, last) of `rows` sequences spread over the slots, each at a
    position in [200, cap - width), writing `width` new tokens."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(max(0, min(200, cap - width - 1)), cap - width, (rows,), generator=g)
    pos = start[:, None] + torch.arange(width)[None, :]
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (rows, width), generator=g)
    which = torch.randperm(slots, generator=g)[:rows].sort().values
    last = torch.full((rows,), width - 1)
    return tuple(t.to(device) for t in (ids, pos, which, pos)) + (cap, last.to(device))


def timed_replay(graph, device, reps: int) -> tuple[float, float]:
    """(host ms to launch a replay, GPU ms a replay) over `reps` replays back to back."""
    torch.cuda.synchronize(device)
    host = 0.0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        t = time.perf_counter()
        graph.replay()
        host += time.perf_counter() - t
    end.record()
    torch.cuda.synchronize(device)
    return 1e3 * host / reps, start.elapsed_time(end) / reps


def timed_eager(fn, device, reps: int) -> tuple[float, float]:
    """(host ms to queue the forward, wall ms with the GPU's work done)."""
    host = wall = 0.0
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        host += time.perf_counter() - t
        sync(device)
        wall += time.perf_counter() - t
    return 1e3 * host / reps, 1e3 * wall / reps


class FlashSlotModel(SlotModel):
    """Varlen decode attention in FlashAttention-2's kernel instead of the memory-efficient one:
    grouped query heads natively, each row one query token over its slot's positions
    (seqused_k). A candidate, measured here before the engine takes it."""

    def _varlen_inputs(self, slot, pos, keys):
        _, cu_k, lengths = super()._varlen_inputs(slot, pos, keys)
        rows = torch.arange(slot.shape[0] + 1, dtype=torch.int32, device=slot.device)  # one query row each
        return rows, cu_k, lengths

    def _attend_varlen(self, q, kc, vc, keys, cu_q, cu_k, lengths):
        n, kvh, d = q.shape[0], self.kv_heads, self.head_dim
        k = kc.transpose(1, 2).reshape(-1, kvh, d)  # position-major storage: a view
        v = vc.transpose(1, 2).reshape(-1, kvh, d)
        out = torch.ops.aten._flash_attention_forward(q.reshape(n, self.heads, d), k, v, cu_q, cu_k, 1, keys, 0.0,
                                                      False, False, scale=self.scaling, seqused_k=lengths)[0]
        return out.reshape(n, 1, -1)


def packed_prefill(rows: int, width: int, held: int, slots: int, cap: int, groups: int, device, seed: int) -> tuple:
    """The engine's packed prefill inputs (erl.rollout.layout.packed_prefill_inputs) for `rows`
    prompts of `held` + `width` tokens, the first `held` already in their slots' KV."""
    from erl.rollout.layout import packed_prefill_inputs

    g = torch.Generator().manual_seed(seed)
    which = torch.randperm(slots, generator=g)[:rows].tolist()
    chunk = [(s, held, torch.randint(0, SMOLLM2_135M["vocab_size"], (held + width,), generator=g).tolist())
             for s in which]
    *inputs, packed = packed_prefill_inputs(chunk, cap, cap, groups)
    inputs = [t.to(device) if torch.is_tensor(t) else t for t in inputs]
    return inputs, {"packed": (*(t.to(device, torch.int32) for t in packed[:3]), packed[3])}


def host_calls(fn, top: int) -> list[tuple[str, int, float, float]]:
    """The host's side of one call of fn with the GPU idle before it: (op or CUDA runtime call,
    calls, self host ms, GPU ms), the `top` by self host time. A host that waits for the GPU shows
    as a runtime call (cudaStreamSynchronize, cudaMemcpyAsync, cudaLaunchKernel) with a long self time."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key[:60], e.count, e.self_cpu_time_total / 1e3, e.self_device_time_total / 1e3)
            for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r[2])[:top]


def kernel_table(fn, top: int) -> tuple[int, list[tuple[str, int, float]]]:
    """(CUDA kernels one call of fn launches, the `top` kernels by GPU time: name, calls, ms)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    by: dict[str, list] = {}
    for e in kernels:
        row = by.setdefault(e.name[:70], [0, 0.0])
        row[0] += 1
        row[1] += e.device_time / 1e3
    rows = sorted(((name, c, ms) for name, (c, ms) in by.items()), key=lambda r: -r[2])
    return len(kernels), rows[:top]


# F.rms_norm alone was a variant here: 1.04x on the GPU (docs/gpu/host_planning/call8). With the fused
# projections it is the engine's path ("fused": SlotModel.fused, erl.rollout.fused; call5 of docs/gpu/host_split).
VARIANTS = {"dense decode": {"varlen": False}, "varlen decode": {"varlen": True},
            "flash varlen": {"varlen": True, "flash": True}, "flex varlen": {"varlen": True, "flex": True},
            "fused varlen": {"varlen": True, "fused": True}, "fused flex": {"varlen": True, "fused": True, "flex": True},
            # the layers' work around attention in two compiled regions (erl.rollout.regions)
            "fused regions": {"varlen": True, "fused": True, "regions": True},
            "regions flex": {"varlen": True, "fused": True, "regions": True, "flex": True},
            "compiled varlen": {"varlen": True, "compile": True},
            "compiled varlen dynamic": {"varlen": True, "compile": True, "dynamic": True}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", type=int, default=384, help="decode rows (an ERL collect averages 383)")
    ap.add_argument("--prefill-rows", type=int, default=16)
    ap.add_argument("--prefill-width", type=int, default=512, help="new tokens a prefill row")
    ap.add_argument("--slots", type=int, default=1024)
    ap.add_argument("--capacity", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--top", type=int, default=15, help="kernels listed by GPU time for each variant (CUDA)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--packed-trace", action="store_true",
                    help="CUDA, varlen variants: also one packed prefill as the engine runs it (--prefill-rows x "
                         "--prefill-width new tokens after --prefill-held held ones): its kernels and its host calls")
    ap.add_argument("--prefill-held", type=int, default=300, help="tokens a packed prefill row already holds")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(device).eval()
    exact = SlotModel(copy.deepcopy(model))  # float32 throughout: the logits' reference
    exact.allocate(args.slots, args.capacity, torch.float32, device)
    cast_linears(model, torch.bfloat16)
    decode = inputs(args.rows, 1, args.slots, args.capacity, device, 0)
    prefill = inputs(args.prefill_rows, args.prefill_width, args.slots, args.capacity, device, 1)
    with torch.no_grad():
        want = exact.forward(*decode)
    del exact
    print(f"slot forward, random SmolLM2-135M (bf16 linears, bf16 autocast) on {device}: decode {args.rows} rows "
          f"of {args.slots} slots, prefill {args.prefill_rows} x {args.prefill_width} tokens, keys {args.capacity}")
    results = {}
    fused = None
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for name in args.variants.split(","):
            flags = VARIANTS[name]
            if flags.get("varlen") and device.type != "cuda":
                continue
            if flags.get("fused") and fused is None:  # the engine's rollout copy on CUDA (erl.rollout.merged)
                fused = copy.deepcopy(model)
                fuse_projections(fused)
            net = (FlashSlotModel if flags.get("flash") else SlotModel)(fused if flags.get("fused") else model)
            net.fused = bool(flags.get("fused"))  # also the one-kernel RMSNorm (SlotModel._norm)
            net.varlen = flags["varlen"]
            net.decode_attention = "flex" if flags.get("flex") else "efficient"  # erl.rollout.flex
            net.allocate(args.slots, args.capacity, torch.bfloat16, device)
            net.regions = compiled_regions() if flags.get("regions") else None
            forward = net.forward
            try:
                if flags.get("compile"):  # fused kernels from inductor, recorded in the graph like eager's
                    forward = torch.compile(net.forward, dynamic=flags.get("dynamic", False),
                                            options={"emulate_precision_casts": True})
                    t = time.perf_counter()
                    forward(*decode)
                    print(f"{name}: compiled in {time.perf_counter() - t:.1f} s", flush=True)
                t = time.perf_counter()
                forward(*decode)
                net.forward(*prefill)  # compiled regions compile the prefill's shapes here, not in its timing
                sync(device)
                print(f"{name}: first calls {time.perf_counter() - t:.1f} s", flush=True)
            except Exception as exc:  # noqa: BLE001 -- a candidate the device cannot run: say so, go on
                print(f"{name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", flush=True)
                net.release()
                continue
            if device.type == "cuda":
                n_kernels, table = kernel_table(functools.partial(forward, *decode), args.top)
                logits = forward(*decode)
            else:
                counter = Kernels()
                with counter:
                    logits = forward(*decode)
                n_kernels, table = counter.n, []
            row = {"kernels": n_kernels, "error": (logits - want).abs().max().item()}
            row["prefill host"], row["prefill wall"] = timed_eager(functools.partial(net.forward, *prefill), device,
                                                                   max(args.reps // 5, 2))
            if device.type == "cuda":
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(3):
                        forward(*decode)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    forward(*decode)
                row["replay host"], row["replay gpu"] = timed_replay(graph, device, args.reps)
                del graph
            else:
                row["replay host"], row["replay gpu"] = timed_eager(functools.partial(net.forward, *decode), device, args.reps)
            if args.packed_trace and device.type == "cuda" and flags["varlen"]:
                packed_trace(net, args, device)
            results[name] = row
            net.release()
            print(f"{name:>13}: {row['kernels']} kernels a decode forward, logits within {row['error']:.3g} of "
                  f"float32 | decode step: host {row['replay host']:.2f} ms to launch, GPU {row['replay gpu']:.2f} ms "
                  f"| prefill: host {row['prefill host']:.1f} ms to queue, {row['prefill wall']:.1f} ms done", flush=True)
            for kernel, calls, ms in table:
                print(f"      {ms:7.3f} ms {calls:5d} x {kernel}")
    if not results:
        return
    first, a = next(iter(results.items()))
    for name, b in list(results.items())[1:]:
        print(f"ratios {first} / {name}: kernels {a['kernels'] / b['kernels']:.2f}, decode GPU "
              f"{a['replay gpu'] / b['replay gpu']:.2f}, prefill done {a['prefill wall'] / b['prefill wall']:.2f}")


def packed_trace(net: SlotModel, args, device) -> None:
    """One packed prefill of the engine's kind: host time to queue it, GPU time, its costliest
    kernels and its host calls (is the host waiting for the GPU while it queues a prefill?)."""
    groups = net.heads // net.kv_heads
    ins, kw = packed_prefill(args.prefill_rows, args.prefill_width, args.prefill_held, args.slots, args.capacity,
                             groups, device, 2)
    call = functools.partial(net.forward, *ins, **kw)
    call()  # compiled regions meet this shape here
    sync(device)
    host, wall = timed_eager(call, device, max(args.reps // 5, 2))
    n_kernels, table = kernel_table(call, args.top)
    tokens = args.prefill_rows * args.prefill_width
    print(f"      packed prefill, {args.prefill_rows} rows x {args.prefill_width} new tokens after {args.prefill_held} "
          f"held ({tokens} tokens): host {host:.1f} ms to queue, {wall:.1f} ms done, {n_kernels} kernels")
    for kernel, calls, ms in table:
        print(f"      {ms:7.3f} ms {calls:5d} x {kernel}")
    print("      its host calls (self host ms, GPU ms):")
    for key, calls, cpu, gpu in host_calls(call, args.top):
        print(f"      {cpu:7.3f} ms host {gpu:7.3f} ms GPU {calls:5d} x {key}")


if __name__ == "__main__":
    main()
