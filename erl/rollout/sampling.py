"""Token sampling for the rollout engine: greedy or temperature / top-k / top-p per row, with
the sampled token's log-prob under logits / temperature (as HFPolicy reports it); which
requests it can serve (check_request)."""

from __future__ import annotations

import torch

from erl.core.interfaces import SamplingParams
from erl.rollout.device import to_device

SUPPORTED_EXTRA = ("top_k",)


def check_request(prompt_ids: list[int], params: SamplingParams, max_len: int) -> list[int]:
    """The prompt as ints, or a ValueError that names what the engine cannot do."""
    prompt = list(map(int, prompt_ids))
    if not prompt:
        raise ValueError("RolloutEngine: empty prompt")
    if len(prompt) >= max_len:
        raise ValueError(f"RolloutEngine: prompt of {len(prompt)} tokens does not fit the context limit "
                         f"of {max_len} (max_len), which must leave room for one generated token")
    if params.max_new_tokens < 1:
        raise ValueError(f"RolloutEngine: max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if params.temperature < 0 or not 0 < params.top_p <= 1:
        raise ValueError(f"RolloutEngine: need temperature >= 0 and 0 < top_p <= 1, got "
                         f"temperature={params.temperature}, top_p={params.top_p}")
    unknown = sorted(set(params.extra) - set(SUPPORTED_EXTRA))
    if unknown:
        raise ValueError(f"RolloutEngine: unsupported sampling params {unknown} (supported extra: "
                         f"{list(SUPPORTED_EXTRA)}); use rollout_engine=hf for them")
    return prompt


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of probs [n, vocab] by inverse CDF: the first token whose cumulative
    mass reaches u ~ U(0, total]; a zero-probability token is never drawn (its cumulative mass
    equals its predecessor's, found first). One cumsum, where an exponential race (or
    torch.multinomial) costs ~30 ms a decode step for 16 rows of a 49k vocabulary on a CPU core."""
    cdf = probs.double().cumsum(-1)
    u = (1 - torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=cdf.device)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def _per_row(values: list, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One value a row on `dev`: a fill where every row has the same (a collect's requests share
    their sampling), else a copy from the host. The same values either way."""
    if values and all(v == values[0] for v in values):
        return torch.full((len(values),), values[0], dtype=dtype, device=dev)
    return to_device(values, dev, dtype)


def sample(logits: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: greedy (temperature 0) or a sample from logits / temperature cut to top_k /
    top_p. Returns the tokens and their log-probs under logits / temperature (uncut, as HFPolicy),
    on logits' device: which branches run is read from `params` on the host, so nothing here
    waits for the GPU and the engine can overlap the next step's host work with this one. Where
    no row is greedy the greedy branch's kernels are skipped (the same tokens: each is the draw)."""
    dev = logits.device
    temperatures = [p.temperature for p in params]
    temps = _per_row(temperatures, dev, logits.dtype)
    greedy_rows = sum(t == 0 for t in temperatures)
    sampling = greedy_rows < len(temperatures)
    if sampling and not greedy_rows:
        greedy, scaled = None, logits / temps[:, None]
    else:
        greedy = temps == 0
        scaled = logits / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
    logp = torch.log_softmax(scaled, dim=-1)
    tokens = logits.argmax(-1) if greedy is not None else None
    if sampling:
        cut = scaled  # the cuts below make new tensors: scaled stays as logp read it
        top_k = [int(p.extra.get("top_k") or 0) for p in params]
        if any(top_k):
            k = to_device([t if t > 0 else cut.shape[-1] for t in top_k], dev)
            kth = cut.sort(dim=-1, descending=True).values.gather(-1, (k - 1)[:, None].clamp(max=cut.shape[-1] - 1))
            cut = cut.masked_fill(cut < kth, float("-inf"))
        top_ps = [p.top_p for p in params]
        if any(t < 1 for t in top_ps):
            top_p = _per_row(top_ps, dev, logits.dtype)
            probs, order = torch.softmax(cut, dim=-1).sort(dim=-1, descending=True)
            drop = (probs.cumsum(-1) - probs) >= top_p[:, None]  # the mass before it already reaches top_p
            cut = cut.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        drawn = draw(torch.softmax(cut, dim=-1))
        tokens = drawn if greedy is None else torch.where(greedy, tokens, drawn)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
