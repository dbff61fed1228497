"""The measuring tools of benchmarks/rollout.py (--timeline, --time-calls) on a scripted engine with
a scripted clock, and benchmarks/episode_code.py on the tiny model."""

import importlib.util
import types
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Clock:
    """perf_counter that reads `now`, moved by hand."""
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class Engine:
    """A launch takes `seconds` of the clock, makes `admits` admissions, ends `ended` sequences, then delivers."""
    def __init__(self, clock):
        self.clock, self.active, self.waiting, self.stats = clock, {}, [], {"batches": 0, "sequences": 0}

    def launch(self, seconds, admits, ended=0):
        self.stats["batches"] += admits
        self.stats["sequences"] += ended
        self.clock.now += seconds
        return self._deliver(seconds)

    def _deliver(self, seconds):
        return seconds


def test_timeline_splits_a_collect_by_the_rows_of_its_steps(monkeypatch, capsys):
    """Launches with 0, 600, 600, 200 and 3 rows decoding before them, 0.1, 0.02, 0.03, 0.01 and
    0.5 s apart (the last until the block ends): the bands get 2 steps 0.05 s, 1 step 0.01 s, 2
    steps 0.6 s, with the admissions made in their steps."""
    rollout = load("rollout")
    clock = Clock()
    monkeypatch.setattr(rollout, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    engine = Engine(clock)
    steps = [(0, 0.1, 1), (600, 0.02, 0), (600, 0.03, 1), (200, 0.01, 0), (3, 0.5, 2)]
    with rollout.timeline(engine, True):
        for rows, seconds, admits in steps:
            engine.active = dict.fromkeys(range(rows))  # what decodes when the step is launched
            engine.launch(seconds, admits)
    assert "launch" not in vars(engine)  # the wrapper is gone
    text = capsys.readouterr().out
    assert "timeline: 5 engine steps over 0.66 s" in text
    assert "rows   >= 512:    2 steps,  0.050 s ( 25.0 ms a step), 1 admissions" in text
    assert "rows  128-511:    1 steps,  0.010 s ( 10.0 ms a step), 0 admissions" in text
    assert "rows      0-7:    2 steps,  0.600 s (300.0 ms a step), 3 admissions" in text


def test_timeline_steps_prints_a_line_a_step(monkeypatch, capsys):
    """Three launches 0.1, 0.02 and 0.3 s long: each line has the step's ms, the rows decoding and
    requests waiting before its launch, and the admissions and sequences ended in it."""
    rollout = load("rollout")
    clock = Clock()
    monkeypatch.setattr(rollout, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    engine = Engine(clock)
    with rollout.timeline(engine, True, steps=True):
        for rows, waiting, seconds, admits, ended in [(0, 5, 0.1, 1, 0), (5, 2, 0.02, 0, 3), (2, 0, 0.3, 0, 2)]:
            engine.active, engine.waiting = dict.fromkeys(range(rows)), [None] * waiting
            engine.launch(seconds, admits, ended)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["step", "ms", "rows", "waiting", "admitted", "ended"]
    assert [line.split() for line in lines[1:4]] == [["0", "100.0", "0", "5", "1", "0"],
                                                    ["1", "20.0", "5", "2", "0", "3"],
                                                    ["2", "300.0", "2", "0", "0", "2"]]
    assert lines[4] == "timeline: 3 engine steps over 0.42 s"


def test_timed_calls_counts_methods_and_module_functions_then_restores_them(monkeypatch, capsys):
    rollout = load("rollout")
    clock = Clock()
    monkeypatch.setattr(rollout, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    engine = Engine(clock)
    module = types.ModuleType("scripted_mod")
    module.f = lambda x: x + 1
    monkeypatch.setitem(__import__("sys").modules, "scripted_mod", module)
    original = module.f
    with rollout.timed_calls(engine, ["_deliver", "scripted_mod:f"]):
        engine.launch(0.25, 0)
        engine.launch(0.5, 0)
        assert module.f(1) == 2
    assert module.f is original and "_deliver" not in vars(engine)
    text = capsys.readouterr().out
    assert "_deliver:      2 calls,   0.000 s" in text  # the clock moved before each delivery, not during
    assert "scripted_mod:f:      1 calls" in text


def test_episode_code_benchmark_times_both_collects_without_a_model_call(capsys):
    """The tiny model's config, 2 tasks: RLVR makes 2n first attempts a task; ERL n, and its failed
    ones reflect and try again, so it calls generate for reflections too."""
    bench = load("episode_code")
    sets = ["model=tiny", "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2", "env.n_train=8",
            "trainer.tasks_per_step=2", "erl.n_attempt=2", "erl.max_new_tokens=16", "erl.max_reflection_tokens=48"]
    assert bench.main([*[a for s in sets for a in ("--set", s)], "--collects", "1"]) == 0
    text = capsys.readouterr().out
    calls = {mode: int(line.split(",")[1].split()[0]) for line in text.splitlines()
             for mode in ("ERL", "RLVR") if line.strip().startswith(f"{mode}:")}
    assert set(calls) == {"ERL", "RLVR"} and calls["ERL"] > 0 and calls["RLVR"] > 0
    assert "ERL / RLVR:" in text and "ERL - 1.5 x RLVR:" in text
    from erl.core.interfaces import SamplingParams
    from erl.models.tiny import build_tiny_tokenizer

    policy = bench.InstantPolicy(build_tiny_tokenizer(), 48)
    moves = policy.generate_batch([[1], [1]], SamplingParams(max_new_tokens=16))
    reflection = policy.generate_batch([[1]], SamplingParams(max_new_tokens=48))[0]
    assert [m.text for m in moves] == list(bench.MOVES[:2]) and reflection.text == bench.REFLECTION
    assert len(moves[0].token_ids) <= 16 and policy.stats["sequences"] == 3



def test_memory_retrieval_benchmark_compares_the_same_retrievals(capsys):
    """benchmarks/memory_retrieval.py, small: both ways return the same entries (it asserts so)
    and it prints each way's time and their ratio."""
    bench = load("memory_retrieval")
    assert bench.main(["--tasks", "4", "--n", "3", "--size", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "12 retrievals (4 tasks x 3) from a memory of 16" in out
    assert "ranked anew each time:" in out and "ranking kept per task:" in out
    assert "ratio anew / kept:" in out


def test_set_attribute_converts_to_the_attributes_type_along_a_path():
    """How `--engines engine+ATTR=VALUE` and local_step's `--engine-set` set an engine attribute:
    a number or flag through float, a string as given, a path through the engine's forward (`net.`);
    a missing name is a ValueError that names it."""
    rollout = load("rollout")
    engine = types.SimpleNamespace(admit_wait=8, admit_ratio=1.0, kind="flex", net=types.SimpleNamespace(fused=True))
    for item in ("admit_wait=32", "admit_ratio=0.5", "kind=efficient", "net.fused=0"):
        rollout.set_attribute(engine, item)
    assert (engine.admit_wait, engine.admit_ratio, engine.kind, engine.net.fused) == (32, 0.5, "efficient", False)
    for bad in ("nope=1", "net.nope=1", "nothing.fused=1"):
        try:
            rollout.set_attribute(engine, bad)
        except ValueError as exc:
            assert repr(bad.split("=")[0]) in str(exc)
        else:
            raise AssertionError(f"{bad} was set")


def test_verl_scaling_takes_medians_over_the_same_steps(tmp_path, capsys):
    """t1 / (N tN) from two metrics files, worked by hand: steps 2-4 of the 1-GPU run take 20, 24
    and 22 s (median 22), of the 2-GPU run 12, 10 and 11 s (median 11): speed-up 2.0, efficiency
    1.0. Step 1 (compiles) and eval-only rows stay out; a range with no step is an error."""
    import json

    import pytest

    scaling = load("verl_scaling")

    def write(name, times):
        rows = [{"step": 0, "eval/success": 0.1}]
        rows += [{"step": k, "time/step": t, "time/rollout": t / 4, "time/update": 3 * t / 4}
                 for k, t in enumerate(times, 1)]
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    one, two = write("one.jsonl", [90, 20, 24, 22]), write("two.jsonl", [50, 12, 10, 11, 30])
    scaling.main(["--one", str(one), "--many", str(two), "--steps", "2-4", "--png", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert "time/step         22.00    11.00    2.00      1.000" in out
    assert "time/rollout       5.50     2.75    2.00      1.000" in out
    assert (tmp_path / "s.png").stat().st_size > 0
    # step 5 of the 2-GPU run (30 s) moves its median from 11 to 11.5 over steps 2-5
    assert scaling.scaling(scaling.medians(scaling.read_metrics(one), (2, 4)),
                           scaling.medians(scaling.read_metrics(two), (2, 5)), 2)["time/step"] == \
        (22.0, 11.5, pytest.approx(22 / 11.5), pytest.approx(22 / 23))
    with pytest.raises(ValueError, match="no training step in 7-9"):
        scaling.medians(scaling.read_metrics(one), (7, 9))
    with pytest.raises(SystemExit):
        scaling.main(["--one", str(one), "--many", str(two), "--steps", "4-2"])


def test_work_ratios_set_time_against_the_work_each_method_did():
    """verl_step.work_ratios on two step pairs worked out by hand. Pair 1: ERL generates 1.5x RLVR's
    tokens (300 / 200) in 2x its rollout time, and runs 1,000 - 200 = 800 update tokens against 400
    (RLVR has no idle rows: verl's shape) in 3x its update time: 2/1.5 = 1.333 a generated token,
    3/2 = 1.5 an update token; at RLVR's rates 1.5 x 2 s + 2 x 1 s over 3 s = 5/3. Pair 2: 1.0x and
    1.0x the work in 1.2x and 1.0x the time: 1.2, 1.0, and 1.0 at equal rates. Medians of two: means."""
    verl_step = load("verl_step")
    erl = [{"tokens/generated": 300, "tokens/total": 1000, "train/idle_tokens": 200, "time/rollout": 4.0, "time/update": 3.0},
           {"tokens/generated": 100, "tokens/total": 500, "train/idle_tokens": 0, "time/rollout": 1.2, "time/update": 1.0}]
    rlvr = [{"tokens/generated": 200, "tokens/total": 400, "time/rollout": 2.0, "time/update": 1.0},
            {"tokens/generated": 100, "tokens/total": 600, "train/idle_tokens": 100, "time/rollout": 1.0, "time/update": 1.0}]
    w = verl_step.work_ratios({"erl": erl, "rlvr": rlvr})
    assert w["generated_tokens"] == pytest.approx((1.5 + 1.0) / 2)
    assert w["update_tokens"] == pytest.approx((2.0 + 1.0) / 2)
    assert w["rollout_time_per_token"] == pytest.approx((2 / 1.5 + 1.2) / 2)
    assert w["update_time_per_token"] == pytest.approx((1.5 + 1.0) / 2)
    assert w["step_at_equal_rates"] == pytest.approx((5 / 3 + 1.0) / 2)
    assert verl_step.work_ratios({"erl": [], "rlvr": []}) == {}
    res = {"erl": {}, "rlvr": {}, "ratio/step_time": 1.6, "ratio/rollout_time": 1.6, "ratio/update_time": 1.6,
           "ratio/pairs": [1.6], "steps": 2, "excess": {"time/step": 0.0, "time/rollout": 0.0, "time/update": 0.0}, "work": w}
    assert "at RLVR's rates the step ratio would be 1.333" in verl_step.report(res)


def test_rollout_benchmark_scores_the_preset_gpu_engine_against_the_trainers_pass(capsys):
    """benchmarks/rollout.py's preset=gpu variant on the tiny model (CPU: flex decode on the
    position-major cache, bf16 autocast, no compiled regions): it samples, and its log-probs sit
    near the trainer's teacher-forced bf16 pass and an fp32 forward (bf16's rounding, not a bug:
    on this 2-layer model ~3e-3), and the trainer's pass against itself in another batch: the four
    figures printed."""
    import re

    import torch

    from erl.core.interfaces import SamplingParams
    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

    rollout = load("rollout")
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(tok)
    prompts = rollout.prompts_for(4, model.config.vocab_size)
    params = SamplingParams(max_new_tokens=6, temperature=0.7)
    rate = rollout.preset_kernels(model, tok, types.SimpleNamespace(batch=4), prompts, params, torch.device("cpu"))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert rate > 0 and line.startswith("engine preset=gpu kernels (bf16 autocast, flex)")
    errors = [float(x) for x in re.findall(r"(\d\.\d\de[-+]\d\d) \(mean", line)]
    assert len(errors) == 4 and all(0 < e < 0.05 for e in errors[:3]) and 0 <= errors[3] < 0.05, line
    assert "same rows in a batch of 4, reversed" in line  # 8 rows asked, 4 generated


def test_forced_logprobs_of_rows_scored_inside_another_batch_are_those_rows():
    """benchmarks/rollout.py's floor for the bf16 figure scores the first rows inside a larger batch in
    reverse order; it must hand back those rows' log-probs, in their order (float32: alike to 1e-5)."""
    import torch

    from erl.core.interfaces import Generation
    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

    rollout = load("rollout")
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(tok).eval()
    prompts = [p[:8 + 3 * i] for i, p in enumerate(rollout.prompts_for(6, model.config.vocab_size))]
    gens = [Generation(token_ids=list(range(5, 9 + i)), logprobs=[0.0] * (4 + i), text="",
                       finish_reason="length")
            for i in range(6)]
    alone = rollout.forced_logprobs(model, gens, prompts, 1.0, torch.device("cpu"), rows=3)
    inside = rollout.forced_logprobs(model, gens, prompts, 1.0, torch.device("cpu"), rows=3, among=6)
    assert [len(t) for t in inside] == [4, 5, 6]
    for a, b in zip(alone, inside):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_settled_heap_keeps_no_cyclic_garbage_from_a_step(capsys):
    """benchmarks/heap_retention.py: a full collection after each settled step (the tiny model's ERL
    steps, the memory full and evicting) finds nothing unreachable among the frozen objects, so the
    settled heap keeps nothing that a plain collector would have freed (erl.trainers.heap)."""
    import gc

    retention = load("heap_retention")
    assert retention.main(["--steps", "2", "--set", "trainer.tasks_per_step=2", "--set", "erl.memory_size=2",
                           "--set", "erl.memory_threshold=0.0"]) == 0
    out = capsys.readouterr().out
    assert "step   2:" in out and "| memory 2 |" in out, out
    assert out.strip().splitlines()[-1].endswith("over 2 steps: 0"), out
    assert gc.get_freeze_count() == 0  # the loop's end thawed what it froze


def test_padded_width_counts_differences_in_bf16_steps(capsys):
    """benchmarks/padded_width.py: bf16's spacing is 2**(e - 7) on [2**e, 2**(e + 1)), so 1 + 2**-7 is one
    step from 1 and 3.03125 two steps from 3 (spacing 1/64 there); on the tiny model (too small for its
    kernels to tile by shape, on CPU) no padded width moves a value."""
    import torch

    widths = load("padded_width")
    steps = widths.bf16_steps(torch.tensor([1.0, 3.0, -3.0, 100.0]), torch.tensor([1.0078125, 3.03125, -3.0, 100.5]))
    assert steps.tolist() == [1.0, 2.0, 0.0, 1.0]
    assert widths.main(["--widths", "200,300"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == ["width   200: 0.0000 of the values differ", "width   300: 0.0000 of the values differ"]
    with pytest.raises(SystemExit, match="longest row"):
        widths.main(["--widths", "100"])


def test_ratio_interval_draws_step_pairs_with_replacement():
    """verl_step.ratio_interval by hand. Steady pairs (ERL 2 s, RLVR 1 s each time): every draw gives 2.0.
    ERL [1, 3] against RLVR [1, 1]: a draw of two pairs holds pair 0 twice (1/4: median 1), both (1/2:
    median 2) or pair 1 twice (1/4: 3), so the 5th and 95th percentiles are 1 and 3. Unpaired input is
    refused."""
    verl_step = load("verl_step")
    assert verl_step.ratio_interval([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]) == (2.0, 2.0)
    assert verl_step.ratio_interval([1.0, 3.0], [1.0, 1.0]) == (1.0, 3.0)
    with pytest.raises(ValueError, match="step pairs"):
        verl_step.ratio_interval([1.0, 2.0], [1.0])
    res = {"erl": {}, "rlvr": {}, "ratio/step_time": 1.6, "ratio/rollout_time": 1.6, "ratio/update_time": 1.6,
           "ratio/pairs": [1.4, 1.8], "ratio/step_time_interval": (1.4, 1.8), "steps": 2,
           "excess": {"time/step": 0.0, "time/rollout": 0.0, "time/update": 0.0}}
    assert "interval over the step pairs: 1.400-1.800; pairs at most 1.5: 1 of 2" in verl_step.report(res)


def test_ratio_runs_tables_each_run_and_refuses_one_without_steps(tmp_path, capsys):
    """benchmarks/ratio_runs.py over two written runs: one steady at 1.2 (interval 1.2-1.2, both pairs
    under 1.5), one at 2.0; one run's interval at or under 1.5. A file without per-step times is named."""
    ratio_runs = load("ratio_runs")

    def run(name, erl, rlvr):
        path = tmp_path / f"{name}.json"
        path.write_text(__import__("json").dumps({
            "ratio/step_time": sorted(erl)[len(erl) // 2] / sorted(rlvr)[len(rlvr) // 2],
            "per_step": {"erl": [{"time/step": t} for t in erl], "rlvr": [{"time/step": t} for t in rlvr]}}))
        return str(path)

    assert ratio_runs.main([run("a", [1.2, 2.4], [1.0, 2.0]), run("b", [4.0, 4.0], [2.0, 2.0])]) == 0
    out = capsys.readouterr().out
    assert "1.200  1.200-1.200        2 of 2" in out
    assert "2.000  2.000-2.000        0 of 2" in out
    assert "runs whose interval lies at or under 1.5: 1 of 2; whose median does: 1 of 2" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"ratio/step_time": 1.0}')
    with pytest.raises(SystemExit):
        ratio_runs.main([str(bad)])
    assert "no per-step times" in capsys.readouterr().err
