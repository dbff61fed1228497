"""Rollout throughput: the engine (erl.rollout.engine) against plain `generate` and the
static-cache compiled `generate` ceiling, on the same FrozenLake-sized prompts.

    PYTHONPATH=. python benchmarks/rollout.py --device cuda --batch 512 --new-tokens 256 --dtype bf16
    PYTHONPATH=. python benchmarks/rollout.py --device cuda --batch 512 --turns 3   # multi-turn: KV reuse
    PYTHONPATH=. python benchmarks/rollout.py                                       # small CPU run
    PYTHONPATH=. python benchmarks/rollout.py --workload erl                        # the default run's step, CPU
    PYTHONPATH=. python benchmarks/rollout.py --workload erl --engines engine-own,engine  # what lent KV saves
    PYTHONPATH=. python benchmarks/rollout.py --wait-policies ACTIVE,PASSIVE        # OpenMP spin vs sleep, CPU

--workload erl runs what the local trainer runs, with its defaults (configs/local: the real
SmolLM2-135M-Instruct, FrozenLake, LoRA; override with --set key=value, e.g. --set
trainer.precision=fp32 to run as a CPU without AMX does): a greedy eval of trainer.eval_tasks
tasks and one ERL collect (attempt 1, reflection, attempt 2) of the same tasks under the same
seed, once per rollout policy (HFPolicy = batched `generate`, and the engine), side by side.
Without --model the model is SmolLM2-135M's architecture with random weights (nothing to
download); every engine generates exactly --new-tokens tokens (no stop token) so runs compare.
Prints generated tokens/s, ratios, prefill tokens, recompiles and the engine's log-prob error
against a teacher-forced forward pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import os
import random
import subprocess
import sys
import time

import erl.cli  # noqa: F401 -- erl-train's OpenMP wait policy, set before torch loads OpenMP

# isort: split
import torch

from erl.core.interfaces import SamplingParams
from erl.rollout.engine import RolloutEngine
from erl.rollout.layout import round_up

SMOLLM2_135M = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 100000.0,
                "tie_word_embeddings": True, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def load(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    if args.model == "tiny":
        tok = build_tiny_tokenizer()
        model = build_tiny_model(tok).to(dtype)
    elif args.model:
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:  # a tokenizer only supplies pad / decode here: the tiny one will do
        tok = build_tiny_tokenizer()
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(dtype)
    return model.to(args.device).eval(), tok


def prompts_for(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """FrozenLake-like lengths: 60-250 tokens."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(60, 250))] for _ in range(n)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def run_engine(engine, prompts, params, device):
    engine.generate_batch(prompts[: max(8, len(prompts) // 8)], params)  # warm-up (and compiles)
    engine.generate_batch(prompts, params)  # every bucket the timed run meets
    engine.reset_stats()
    engine.forget()  # same prompts again: without this they would all be served from the cache
    gens, dt = timed(device, lambda: engine.generate_batch(prompts, params))
    return gens, dt, dict(engine.stats)


def generate_exactly(model, prompts, new, device, pad, static: bool, temperature: float = 0.7, width: int = 0):
    """One `generate` of exactly `new` tokens for every prompt, left-padded to `width` (0: the
    longest prompt); static: the static cache, whose decode transformers compiles on CUDA."""
    from transformers import GenerationConfig

    width = width or max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    att = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        att[i, width - len(p):] = 1
    cfg = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=temperature, top_k=0,
                           pad_token_id=pad, eos_token_id=None, cache_implementation="static" if static else None)
    return model.generate(input_ids=ids.to(device), attention_mask=att.to(device), generation_config=cfg)


def run_generate(model, prompts, new, device, pad, static: bool):
    with torch.no_grad():
        for _ in range(2):  # the second run is timed (the first compiles)
            _, dt = timed(device, lambda: generate_exactly(model, prompts, new, device, pad, static))
    return len(prompts) * new / dt


def forced_logprobs(model, gens, prompts, temperature, device, rows=8, among: int = 0) -> list[torch.Tensor]:
    """The local trainer's teacher-forced log-probs (erl.trainers.local.batch.response_logprobs,
    its kernels and masks) of the first `rows` generations, one float32 CPU tensor each. `among`
    > rows: the same rows scored inside a batch of the first `among` generations in reverse order
    (other rows, another padded width: other matmul shapes)."""
    from erl.core.types import TokenSample
    from erl.trainers.local.batch import pad_samples, response_logprobs

    if among > rows:
        every = forced_logprobs(model, gens[:among][::-1], prompts[:among][::-1], temperature, device, among)
        return every[::-1][:rows]
    pairs = list(zip(prompts, gens))[:rows]
    samples = [TokenSample(prompt_ids=p, response_ids=g.token_ids, response_mask=[1] * len(g.token_ids),
                           logprobs=[0.0] * len(g.token_ids)) for p, g in pairs]
    with torch.no_grad():
        ref, _ = response_logprobs(model, pad_samples(samples, 0).to(device), temperature)
    return [ref[i, :len(g.token_ids)].float().cpu() for i, (_, g) in enumerate(pairs)]


def max_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> str:
    """max |a - b| over every token, and its mean (bf16 errors come in rare large outliers)."""
    diff = torch.cat([(x - y).abs() for x, y in zip(a, b)])
    return f"{float(diff.max()):.2e} (mean {float(diff.mean()):.1e})"


def logprob_error(model, gens, prompts, temperature, device, rows=8, autocast: bool = False) -> str:
    """|engine log-prob - the trainer's| over a few sequences (max, mean); for a bf16 model, or a
    float32 one the trainer scores under bf16 autocast (`autocast`), also both against a float32
    forward (how far each bf16 computation is from the exact one)."""
    engine = [torch.tensor(g.logprobs) for g in gens[:rows]]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        trainer = forced_logprobs(model, gens, prompts, temperature, device, rows)
    text = max_error(engine, trainer)
    if autocast or next(model.parameters()).dtype != torch.float32:
        exact = forced_logprobs(copy.deepcopy(model).float(), gens, prompts, temperature, device, rows)
        # The trainer's bf16 pass against itself: the same rows in another batch. No engine can be
        # closer to the trainer's pass than that pass is to itself, short of batch-invariant kernels.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            other = forced_logprobs(model, gens, prompts, temperature, device, rows, among=8 * rows)
        text += (f" (against an fp32 forward: engine {max_error(engine, exact)}, "
                 f"the trainer's bf16 forward {max_error(trainer, exact)}; the trainer's bf16 forward on the "
                 f"same rows in a batch of {min(8 * rows, len(gens))}, reversed: {max_error(trainer, other)})")
    return text


def preset_kernels(model, tok, args, prompts, params, device) -> float:
    """The engine as the local trainer runs it at preset=gpu: its rollout copy (float32 norms and
    embedding, linears in bf16: erl.rollout.merged.cast_linears; fused projections) under bf16
    autocast, flex decode, and on CUDA the compiled regions and CUDA graphs. Its log-probs against
    the trainer's teacher-forced pass (the float32 model under the same autocast, as the trainer
    scores rows) and against a float32 forward. Prints one line; returns the tokens/s."""
    from erl.rollout.fused import fuse_projections
    from erl.rollout.merged import cast_linears

    cuda = device.type == "cuda"
    trainer = copy.deepcopy(model).float()
    rollout = copy.deepcopy(trainer)
    cast_linears(rollout, torch.bfloat16)
    fuse_projections(rollout)
    engine = RolloutEngine(rollout, tok, slots=args.batch, stop_ids=[], regions=cuda, cuda_graphs=cuda)
    engine.varlen_decode = True  # the position-major cache flex reads (CUDA's default; on CPU, tests do the same)
    engine.decode_attention = "flex"
    with torch.autocast(device.type, dtype=torch.bfloat16):
        gens, dt, stats = run_engine(engine, prompts, params, device)
    rate = stats["generated_tokens"] / dt
    print(f"engine preset=gpu kernels (bf16 autocast, flex{', compiled regions, CUDA graphs' if cuda else ''}): "
          f"{rate:,.0f} tok/s | max |logp - teacher-forced| "
          f"{logprob_error(trainer, gens, prompts, params.temperature, device, autocast=True)}", flush=True)
    return rate


def multi_turn(model, tok, args, device, reuse: bool):
    """Episodes of --turns turns: each turn's prompt is the previous prompt + the response +
    ~30 new tokens (an observation), submitted through the async interface as the trainer does."""
    engine = RolloutEngine(model, tok, slots=args.batch, stop_ids=[], compile=args.compile_mode or False,
                           prefix_reuse=reuse)
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.7)
    vocab = model.config.vocab_size
    firsts = prompts_for(args.batch, vocab, seed=1)

    async def episode(i, prompt):
        rng = random.Random(i)
        for _ in range(args.turns):
            g = await engine.generate(prompt, params)
            prompt = prompt + g.token_ids + [rng.randrange(3, vocab) for _ in range(rng.randint(25, 35))]

    async def all_episodes():
        await asyncio.gather(*[episode(i, p) for i, p in enumerate(firsts)])

    asyncio.run(all_episodes())  # warm-up
    engine.reset_stats()
    engine.forget()  # start cold: no KV from the warm-up
    _, dt = timed(device, lambda: asyncio.run(all_episodes()))
    return engine.stats, dt


def erl_workload(args) -> None:
    """Eval + one collect of the trainer's own workload under each rollout policy."""
    import copy

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from erl.cli.app import config_dir
    from erl.rollout.build import build_policy
    from erl.trainers.driver import seed_all
    from erl.trainers.local.run import build

    sets = ["trainer.progress=false", *args.set]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = OmegaConf.to_container(compose("train", overrides=sets), resolve=True)
    trainer, data = build(cfg)
    tc = trainer.cfg
    print(f"ERL workload ({' '.join(sets)}): precision {trainer.precision}, {torch.get_num_threads()} threads; "
          f"eval {len(data['val'])} tasks, collect {tc.tasks_per_step} tasks x {trainer.erl.n_attempt}, "
          f"gen_batch_size {tc.gen_batch_size}", flush=True)
    memory = copy.deepcopy(trainer.memory)
    rates = {}
    names = args.engines.split(",")
    for index, name in enumerate(names):
        name, *opts = name.split("+")  # engine+admit_ratio=0.5: an engine attribute set for this run
        kind, _, mode = name.partition(":")  # engine:reduce-overhead = the engine with a compiled decode
        own = kind == "engine-own"  # the engine without KV lent between slots
        eager = kind == "engine-eager"  # the engine without CUDA graphs
        whole = kind == "engine-bf16"  # on a copy as verl's hf rollout holds one: all bf16, no autocast
        model = bf16_copy(trainer.model) if whole else trainer.model
        policy = build_policy(model, trainer.tokenizer, "engine" if own or eager or whole else kind,
                              max_batch_size=tc.gen_batch_size, compile=mode or False,
                              cuda_graphs=tc.rollout_cuda_graphs and not eager, lend=not own,
                              decode_attention=tc.rollout_decode_attention, merge_lora=tc.rollout_merge_lora,
                              regions=tc.rollout_regions,
                              autocast_dtype=trainer.autocast_dtype)  # the trainer's own rollout copy
        if whole:  # verl's workers generate without autocast
            trainer.rollout_context = contextlib.nullcontext
        else:  # the trainer's own context: its autocast
            vars(trainer).pop("rollout_context", None)
        for opt in opts:
            try:
                set_attribute(policy, opt)
            except ValueError as exc:
                raise SystemExit(f"--engines: {exc}") from None
        name = "+".join([name, *opts])
        requests: list = []
        if args.ceiling and index == len(names) - 1:
            policy.generate = recorded(policy.generate, requests)
        trainer.policy = trainer.workflow.policy = policy  # the workflow's chat tokenizer stays: same tokenizer
        trainer.memory = trainer.workflow.memory = copy.deepcopy(memory)
        seed_all(trainer.seed)
        for part in ("eval", "collect"):
            policy.reset_stats()
            requests.clear()  # the ceiling runs the collect's requests
            last = index == len(names) - 1
            with cuda_profile(last and args.profile_cuda == part), host_profile(last and args.profile_host == part), \
                    timeline(policy, (args.timeline or args.timeline_steps) and part == "collect", args.timeline_steps), \
                    timed_calls(policy, args.time_calls.split(",") if args.time_calls and part == "collect" else []):
                t = time.perf_counter()
                if part == "eval":
                    trainer.evaluate(data["val"])
                else:
                    trainer.collect(trainer.next_tasks())
                    trainer.cursor = 0  # the next policy collects the same tasks
                wall = time.perf_counter() - t
            st = policy.stats
            rates[(index, part)] = wall  # by position: a list may name one policy twice (a,b,a,b)
            print(f"{name:>6} {part:>7}: {wall:6.1f} s | generated {st['generated_tokens']:,} tokens in "
                  f"{st['sequences']} sequences, {st['generated_tokens'] / max(st['generate_seconds'], 1e-9):.1f} "
                  f"tok/s | prefill {st.get('prefill_tokens', 0):,} tokens (reused {st.get('reused_tokens', 0):,}, "
                  f"of them lent by another slot {st.get('shared_tokens', 0):,}; forwards ran "
                  f"{st.get('prefill_padded_tokens', 0):,} with padding), "
                  f"{st.get('prefill_tokens', 0) / max(st['sequences'], 1):.0f} a sequence"
                  + (f" | {st['decode_steps']} decode steps, {st['batches']} admissions, "
                     # a sequence's first token comes from its prefill, every other from a decode step
                     f"{(st['generated_tokens'] - st['sequences']) / max(st['decode_steps'], 1):.0f} rows a decode step, "
                     f"{st['graphs_recorded']} CUDA graphs recorded"
                     if "decode_steps" in st else ""), flush=True)
            if "decode_seconds" in st:  # where the engine's time went (a decode's delivery waits for the GPU)
                other = st["generate_seconds"] - st["decode_seconds"] - st["prefill_seconds"]
                print(f"{'':>15} engine time: decode {st['decode_seconds']:.1f} s "
                      f"({1e3 * st['decode_seconds'] / max(st['decode_steps'], 1):.1f} ms a step), prefill "
                      f"{st['prefill_seconds']:.1f} s ({st['prefill_forwards']} forwards, "
                      f"{1e3 * st['prefill_seconds'] / max(st['prefill_forwards'], 1):.1f} ms each), admission "
                      f"planning and bookkeeping {other:.1f} s; outside the engine {wall - st['generate_seconds']:.1f} s; "
                      f"the host waited for the GPU {st.get('gpu_wait_seconds', 0.0):.1f} s",
                      flush=True)
    for part in ("eval", "collect"):
        for i in range(1, len(names)):
            print(f"ratio {part} wall {names[0]} (run 1) / {names[i]} (run {i + 1}): "
                  f"{rates[(0, part)] / rates[(i, part)]:.2f}")
    if args.ceiling:
        made = sum(n for _, n in requests)
        inside = made / rates[(len(names) - 1, "collect")]
        best, raw = static_ceiling(trainer.model, trainer.tokenizer, requests, args.batch or 512, trainer.device)
        print(f"{names[-1]} inside the trainer's collect: {inside:,.0f} generated tok/s (collect wall time); static-cache "
              f"compiled generate on the same {len(requests)} requests, batches of {args.batch or 512}: {raw:,.0f} tok/s "
              f"(every row's steps; {best:,.0f} of them requested); ratio {inside / raw:.2f}", flush=True)


def bf16_copy(model):
    """The generation copy verl's hf rollout holds (erl.trainers.verl.hf_rollout): the weights of
    `model` (LoRA merged in) in a model wholly in bf16 on CUDA, its projections fused, run without
    autocast; the local trainer's copy keeps fp32 norms and embedding under bf16 autocast."""
    from erl.rollout.fused import fuse_projections
    from erl.rollout.merged import MergedLoRA

    cuda = next(model.parameters()).is_cuda
    merged = MergedLoRA.of(model, torch.bfloat16 if cuda else None)  # merged, frozen, fused on CUDA
    if merged is not None:
        return merged.model.to(torch.bfloat16) if cuda else merged.model
    plain = copy.deepcopy(model).eval().requires_grad_(False)
    if cuda:
        fuse_projections(plain.to(torch.bfloat16))
    return plain


def recorded(generate, requests: list):
    """`generate` that also notes each request's prompt and how many tokens it produced."""
    async def call(prompt_ids, params):
        gen = await generate(prompt_ids, params)
        requests.append((list(prompt_ids), len(gen.token_ids)))
        return gen
    return call


def static_ceiling(model, tok, requests: list, batch: int, device) -> tuple[float, float]:
    """Static-cache compiled `generate` over recorded (prompt, produced tokens) requests, in
    batches of `batch`, every batch of one shape so that one graph compiles (a shape per batch
    went past dynamo's recompile limit): prompts left-padded to one width, each row generating
    the most any request produced (rounded up to 16), the last batch filled with repeats. Run
    twice, the second timed. Returns (requested tokens / s, rows x steps / s): the second is
    the rate the ceiling sustains, the first what the requests needed of it."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    width = round_up(max(len(p) for p, _ in requests), 64)
    new = round_up(max(n for _, n in requests), 16)
    groups = [requests[i:i + batch] for i in range(0, len(requests), batch)]
    # a bf16 copy on CUDA: the trainer's fp32 weights under autocast give the static cache fp32
    # rows and bf16 keys (index_copy_ refuses), and a bf16 model is the faster, fairer ceiling
    model = copy.deepcopy(model).to(torch.bfloat16) if device.type == "cuda" else model
    was_training = model.training
    model.eval()
    total = raw = 0
    with torch.no_grad():
        for timed_pass in (False, True):
            start = time.perf_counter()
            for group in groups:
                prompts = [p for p, _ in group]
                prompts += [prompts[i % len(prompts)] for i in range(batch - len(prompts))]
                generate_exactly(model, prompts, new, device, pad, True, temperature=1.0, width=width)
                if timed_pass:
                    total += sum(n for _, n in group)
                    raw += len(group) * new
            sync(device)
            dt = time.perf_counter() - start
    model.train(was_training)
    return total / dt, raw / dt


@contextlib.contextmanager
def cuda_profile(on: bool):
    """torch.profiler around a block: GPU kernel time by op, printed after it (the wall time of a
    profiled block is not comparable with an unprofiled one)."""
    if not on:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        yield
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30), flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), flush=True)  # the host's side


def attribute_owner(policy, path: str) -> tuple[object, str]:
    """The object an attribute path on the engine ends on, and the path's last name: `admit_wait`
    (the engine's own), `net.forward` (its forward's). ValueError if a name on the way is missing."""
    *parts, attr = path.split(".")
    owner = policy
    for part in parts:
        if not hasattr(owner, part):
            raise ValueError(f"{type(policy).__name__} has no attribute {path!r}")
        owner = getattr(owner, part)
    return owner, attr


def set_attribute(policy, item: str) -> None:
    """`PATH=VALUE` set on the engine (PATH as attribute_owner takes it), VALUE converted to the
    attribute's type (a string stays one; a number or flag goes through float: `admit_wait=32`,
    `net.fused=0`). ValueError if the attribute is missing."""
    path, _, value = item.partition("=")
    owner, attr = attribute_owner(policy, path)
    if not hasattr(owner, attr):
        raise ValueError(f"{type(policy).__name__} has no attribute {path!r}")
    now = getattr(owner, attr)
    setattr(owner, attr, value if isinstance(now, str) else type(now)(float(value)))


@contextlib.contextmanager
def timeline(policy, on: bool, steps: bool = False):
    """Each engine step's start time and its decoding rows, summarised after the block by rows:
    how much of the collect's wall time its wide steps took and how much its tail of few rows (a
    step's time runs from its launch to the next's, so the episodes' code between steps counts).
    `steps`: also one line a step (its time, rows, requests waiting, admissions, sequences ended)."""
    if not on or not hasattr(policy, "launch"):
        yield
        return
    marks: list[tuple[float, int, int, int, int]] = []  # (time, rows decoding and requests waiting
    launch = policy.launch                               # before the launch, admissions and sequences so far)

    def noted(*a, **kw):
        marks.append((time.perf_counter(), len(policy.active), policy.stats["batches"], len(policy.waiting),
                      policy.stats["sequences"]))
        return launch(*a, **kw)

    policy.launch = noted
    try:
        yield
    finally:
        end = time.perf_counter()
        del policy.launch
        bands = [(512, 10**9), (128, 511), (32, 127), (8, 31), (0, 7)]
        spent = {b: [0, 0.0, 0] for b in bands}  # steps, seconds, admissions
        last = (end, 0, policy.stats["batches"], 0, policy.stats["sequences"])
        if steps:
            print("step     ms  rows  waiting  admitted  ended", flush=True)
        for i, ((t, rows, adm, wait, seqs), (t_next, _, adm_next, _, seqs_next)) in enumerate(zip(marks, marks[1:] + [last])):
            if steps:
                print(f"{i:4d} {1e3 * (t_next - t):6.1f} {rows:5d} {wait:8d} {adm_next - adm:9d} {seqs_next - seqs:6d}")
            band = next(b for b in bands if b[0] <= rows <= b[1])
            spent[band][0] += 1
            spent[band][1] += t_next - t
            spent[band][2] += adm_next - adm
        total = end - marks[0][0] if marks else 0.0
        print(f"timeline: {len(marks)} engine steps over {total:.2f} s", flush=True)
        for (lo, hi), (count, secs, adm) in spent.items():
            label = f">= {lo}" if hi == 10**9 else f"{lo}-{hi}"
            print(f"  rows {label:>8}: {count:4d} steps, {secs:6.3f} s ({1e3 * secs / max(count, 1):5.1f} ms a step), "
                  f"{adm} admissions", flush=True)


@contextlib.contextmanager
def timed_calls(policy, names: list[str]):
    """Wall time and calls of each named function during the block, callees included: an attribute
    path on the policy (`_deliver`, `net.forward`: patched on that object) or `module:function`
    (patched in that module, so its callers there see the wrapper). Unlike cProfile it slows
    nothing else, so the seconds compare with the collect's."""
    import importlib

    spent: dict[str, list] = {}
    undo = []
    for name in names:
        if ":" in name:
            owner, attr = importlib.import_module(name.split(":")[0]), name.split(":")[1]
        else:
            owner, attr = attribute_owner(policy, name)
        inner = getattr(owner, attr)
        spent[name] = [0, 0.0]

        def wrapper(*a, _inner=inner, _tally=spent[name], **kw):
            start = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                _tally[0] += 1
                _tally[1] += time.perf_counter() - start

        setattr(owner, attr, wrapper)
        undo.append((owner, attr, inner, ":" not in name))
    try:
        yield
    finally:
        for owner, attr, inner, on_instance in reversed(undo):
            if on_instance:
                delattr(owner, attr)
            else:
                setattr(owner, attr, inner)
        for name, (calls, secs) in spent.items():
            print(f"  {name:>40}: {calls:6d} calls, {secs:7.3f} s ({1e3 * secs / max(calls, 1):6.2f} ms each)", flush=True)


@contextlib.contextmanager
def host_profile(on: bool):
    """cProfile around a block: where the host's Python time goes (functions by own time, then by
    time including callees). The profiler slows Python code (~1.5-2x), so compare shares, not seconds."""
    if not on:
        yield
        return
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        for key in ("tottime", "cumulative"):
            pstats.Stats(prof, stream=sys.stdout).sort_stats(key).print_stats(35)
        sys.stdout.flush()


def wait_policies(values: list[str], rest: list[str]) -> None:
    """Each OMP_WAIT_POLICY in its own process, printed one after the other."""
    for value in values:
        env = {**os.environ, "OMP_WAIT_POLICY": value}
        print(f"== OMP_WAIT_POLICY={value}, {os.getloadavg()[0]:.1f} load before", flush=True)
        subprocess.run([sys.executable, __file__, *rest], env=env, check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a model folder, 'tiny', or nothing: random SmolLM2-135M")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="sequences (default 512 on CUDA, 16 on CPU)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 256 on CUDA, 32 on CPU")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp32", "fp16"], help="default bf16 on CUDA")
    ap.add_argument("--turns", type=int, default=0, help="multi-turn mode: episodes of this many turns")
    ap.add_argument("--compile-mode", default=None,
                    help="also time the engine with torch.compile in this mode (default on CUDA: "
                         "reduce-overhead; 'none' to skip)")
    ap.add_argument("--skip", default="", help="comma list of: eager,graphs,compiled,preset,hf_policy,dynamic,static")
    ap.add_argument("--workload", default="synthetic", choices=["synthetic", "erl"],
                    help="erl: the local trainer's eval + collect with its config (see above)")
    ap.add_argument("--set", action="append", default=[], help="--workload erl: a config override (repeatable)")
    ap.add_argument("--engines", default="hf,engine", help="--workload erl: rollout policies, in this order (hf, engine, "
                         "engine:<torch.compile mode>, engine-own: no KV lent between slots, engine-eager: no CUDA graphs, engine-bf16: on verl's hf rollout copy (all bf16, no autocast); +attr=value sets an engine attribute, e.g. engine+admit_ratio=0.5)")
    ap.add_argument("--ceiling", action="store_true",
                    help="--workload erl: also run static-cache compiled generate on the requests of the last "
                         "policy's collect (batches of --batch, default 512) and print the ratio")
    ap.add_argument("--profile-cuda", nargs="?", const="eval", default=None, choices=["eval", "collect"],
                    help="--workload erl: torch.profiler over the last policy's eval (or collect): GPU time by "
                         "kernel, host time by op")
    ap.add_argument("--profile-host", nargs="?", const="collect", default=None, choices=["eval", "collect"],
                    help="--workload erl: cProfile over the last policy's collect (or eval): the host's Python "
                         "time by function")
    ap.add_argument("--timeline", action="store_true",
                    help="--workload erl: each engine's collect split by the rows its steps decode (wide steps, "
                         "the tail of few rows): steps, wall time, admissions")
    ap.add_argument("--timeline-steps", action="store_true",
                    help="--timeline, and one line per engine step: its ms, rows, requests waiting, admissions, "
                         "sequences ended")
    ap.add_argument("--time-calls", default=None,
                    help="--workload erl: comma list of functions timed in each collect, callees included: attribute "
                         "paths on the engine (_deliver, net.forward) or module:function (erl.rollout.decoding:sample)")
    ap.add_argument("--wait-policies", default=None,
                    help="comma list of OMP_WAIT_POLICY values: the same run once per value, in a subprocess "
                         "each (OpenMP reads it at load), side by side")
    args = ap.parse_args(argv)
    if args.wait_policies:
        rest = list(argv if argv is not None else sys.argv[1:])
        at = next(i for i, a in enumerate(rest) if a.startswith("--wait-policies"))
        del rest[at:at + (1 if "=" in rest[at] else 2)]
        wait_policies(args.wait_policies.split(","), rest)
        return
    if args.workload == "erl":
        erl_workload(args)
        return
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or (512 if cuda else 16)
    args.new_tokens = args.new_tokens or (256 if cuda else 32)
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    if args.compile_mode is None:
        args.compile_mode = "reduce-overhead" if cuda else "none"
    args.compile_mode = None if args.compile_mode == "none" else args.compile_mode
    skip = set(filter(None, args.skip.split(",")))
    if not cuda:
        skip.add("static")  # compiling the static cache takes longer on CPU than the whole run
    device = torch.device(args.device)
    model, tok = load(args)
    print(f"model {args.model or 'random SmolLM2-135M'} {args.dtype} on {args.device}: batch {args.batch}, "
          f"{args.new_tokens} new tokens, prompts 60-250 tokens", flush=True)

    if args.turns:
        for reuse in (False, True):
            stats, dt = multi_turn(model, tok, args, device, reuse)
            print(f"multi-turn x{args.turns} prefix reuse {'on ' if reuse else 'off'}: "
                  f"{stats['generated_tokens'] / dt:,.0f} tok/s | prefill {stats['prefill_tokens']:,} tokens, "
                  f"reused {stats['reused_tokens']:,} | recompiles {stats['recompiles']}", flush=True)
        return

    prompts = prompts_for(args.batch, model.config.vocab_size)
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.7)
    rates = {}
    engines = [("engine eager", False, True, False)] * ("eager" not in skip)
    if cuda and "graphs" not in skip:  # the eager forward recorded as CUDA graphs (the trainer's default on CUDA)
        engines += [("engine cuda graphs", False, True, True)]
    if args.compile_mode and "compiled" not in skip:  # with eager's precision casts (the default) and without
        engines += [(f"engine compiled ({args.compile_mode})", args.compile_mode, True, False),
                    (f"engine compiled ({args.compile_mode}, inductor's own casts)", args.compile_mode, False, False)]
    for name, mode, casts, graphs in engines:
        try:
            engine = RolloutEngine(model, tok, slots=args.batch, stop_ids=[], compile=mode, eager_casts=casts,
                                   cuda_graphs=graphs)
            gens, dt, stats = run_engine(engine, prompts, params, device)
        except Exception as exc:  # noqa: BLE001 -- a compile failure must not hide the other numbers
            print(f"{name}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        rates[name] = stats["generated_tokens"] / dt
        err = logprob_error(model, gens, prompts, params.temperature, device)
        print(f"{name}: {rates[name]:,.0f} tok/s | prefill {stats['prefill_tokens']:,} tokens in "
              f"{stats['batches']} admissions, {stats['decode_steps']} decode steps | decode shapes "
              f"{stats['decode_shapes']}, recompiles in the timed run {stats['recompiles']} | "
              f"max |logp - teacher-forced| {err}", flush=True)
    if "preset" not in skip:
        try:
            rates["engine preset=gpu kernels"] = preset_kernels(model, tok, args, prompts, params, device)
        except Exception as exc:  # noqa: BLE001 -- a compile failure must not hide the other numbers
            print(f"engine preset=gpu kernels: FAILED {type(exc).__name__}: {exc}", flush=True)
    if "hf_policy" not in skip and not cuda:
        from erl.rollout.hf_policy import HFPolicy

        pol = HFPolicy(model, tok, max_batch_size=args.batch)
        pol.generate_batch(prompts[:8], params)
        gens, dt = timed(device, lambda: pol.generate_batch(prompts, params))
        rates["HFPolicy"] = sum(len(g.token_ids) for g in gens) / dt
        print(f"HFPolicy (dynamic cache, stops on the tiny tokenizer's end ids): {rates['HFPolicy']:,.0f} tok/s",
              flush=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for name, static in (("dynamic", False), ("static", True)):
        if name in skip:
            continue
        try:
            rates[f"generate {name}"] = run_generate(model, prompts, args.new_tokens, device, pad, static)
        except Exception as exc:  # noqa: BLE001 -- report it, print the rest
            print(f"generate {name}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        print(f"generate {name}{' (compiled decode)' if static else ''}: {rates[f'generate {name}']:,.0f} tok/s",
              flush=True)
    for e in [k for k in rates if k.startswith("engine")]:
        for b in [k for k in rates if not k.startswith("engine")]:
            print(f"ratio {e} / {b}: {rates[e] / rates[b]:.2f}")


if __name__ == "__main__":
    main()
