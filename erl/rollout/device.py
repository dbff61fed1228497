"""Getting work onto the GPU without the host waiting for it: copies that do not synchronise
the stream, and attention kernels that do not plan on the host. The engine and the local
trainer's forwards use both."""

from __future__ import annotations

import torch


def to_device(values, device: torch.device | str, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Host values (a list or a CPU tensor) as a tensor on `device`. To a GPU through pinned
    memory without waiting: a copy from pageable memory synchronizes the stream, so the host
    would wait for every kernel queued before it (the engine's decode step, the update's last
    micro-batch) instead of preparing the next one meanwhile."""
    t = values.to(dtype) if torch.is_tensor(values) else torch.tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def attention_kernels():
    """Every scaled-dot-product-attention kernel but cuDNN's. With an explicit mask PyTorch
    picks cuDNN on an H200, which plans each new shape on the host: 1.85 ms a call, 41% of the
    host time of an ERL collect (docs/gpu/rollout_overlap/profile_collect.txt), for 0.07 ms of GPU
    time. Prefills and training micro-batches come in ever new shapes; the others take masks too."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
