"""Episode -> verl DataProto: rows, uids, rewards, masks and advantages checked by hand."""

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from erl.core.types import Episode, Step, Trajectory
from erl.trainers.verl.dataproto import (
    add_advantages,
    episodes_to_dataproto,
    pad_to_multiple,
    to_engine_tensordict,
)

PAD = 0


def _episodes():
    # Episode t1:0 failed attempt 1 (r1 = 0), reflected, succeeded on attempt 2 (r2 = 1) and
    # was distilled. Attempt 1 is two turns: the second prompt extends the first
    # (prompt + response + env observation 30, 31), so it becomes ONE row whose response is
    # [20, 21 | 30, 31 | 22] with mask [1, 1, 0, 0, 1].
    a1 = Trajectory("attempt1", steps=[
        Step(prompt_ids=[10, 11], response_ids=[20, 21], logprobs=[-0.1, -0.2]),
        Step(prompt_ids=[10, 11, 20, 21, 30, 31], response_ids=[22], logprobs=[-0.3]),
    ], reward=0.0)
    refl = Trajectory("reflection", steps=[Step(prompt_ids=[40], response_ids=[41, 42], logprobs=[-0.4, -0.5])],
                      reward=1.0)
    a2 = Trajectory("attempt2", steps=[Step(prompt_ids=[50, 51], response_ids=[23], logprobs=[-0.6])], reward=1.0)
    dist = Trajectory("distill", steps=[Step(prompt_ids=[10, 11], response_ids=[23], logprobs=[-0.6])], reward=1.0)
    tool = Trajectory("search_tool", steps=[Step(prompt_ids=[1], response_ids=[2], logprobs=[0.0])], reward=5.0)
    ep0 = Episode(id="t1:0", task={"task_id": "t1"}, trajectories=[a1, refl, a2, dist, tool])
    # Episode t1:1 solved attempt 1 (r1 = 1): one row only.
    ok = Trajectory("attempt1", steps=[Step(prompt_ids=[10, 11], response_ids=[24], logprobs=[-0.7])], reward=1.0)
    ep1 = Episode(id="t1:1", task={"task_id": "t1"}, trajectories=[ok])
    return [ep0, ep1]


def test_rows_uids_rewards_masks():
    data, samples = episodes_to_dataproto(_episodes(), PAD)
    b, nt = data.batch, data.non_tensor_batch
    assert len(data) == 5  # 4 segment rows of t1:0 + 1 of t1:1; the tool trajectory is not trained
    assert list(nt["uid"]) == ["t1|attempt1", "t1|reflection", "t1|attempt2", "t1|distill", "t1|attempt1"]
    assert b["segment_ids"].tolist() == [0, 1, 2, 3, 0]
    # attempt1 carries r1; reflection, attempt2 and distill carry r2.
    assert b["rewards"].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    # Prompts left-padded to P = 2, responses right-padded to R = 5.
    assert b["prompts"].tolist() == [[10, 11], [0, 40], [50, 51], [10, 11], [10, 11]]
    assert b["responses"][0].tolist() == [20, 21, 30, 31, 22]
    assert b["responses"][1].tolist() == [41, 42, 0, 0, 0]
    assert b["response_mask"].tolist() == [[1, 1, 0, 0, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0],
                                           [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    # attention covers the env observation tokens too (the model saw them), not the padding
    assert b["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 1, 1]
    assert b["attention_mask"][1].tolist() == [0, 1, 1, 1, 0, 0, 0]
    assert b["position_ids"][1].tolist() == [0, 0, 1, 2, 2, 2, 2]
    assert b["input_ids"][0].tolist() == [10, 11, 20, 21, 30, 31, 22]
    assert torch.allclose(b["rollout_log_probs"][0], torch.tensor([-0.1, -0.2, 0.0, 0.0, -0.3]))
    assert samples[3].segment.value == "distill"


def test_advantages_group_per_task_and_segment():
    data, _ = episodes_to_dataproto(_episodes(), PAD)
    add_advantages(data, norm_by_std=True, distill_mode="sft")
    adv = data.batch["advantages"]
    # attempt1 group {0, 1}: mean 0.5, std (Bessel) = sqrt(0.5) = 0.7071 -> -0.7071, +0.7071
    # reflection and attempt2 are groups of one: raw reward 1; distill in sft mode: 0.
    s = 0.5 / (0.5 ** 0.5 + 1e-6)
    assert adv[0].tolist() == pytest.approx([-s, -s, 0.0, 0.0, -s], abs=1e-5)  # masked tokens get 0
    assert adv[4, 0].item() == pytest.approx(s, abs=1e-5)
    assert adv[1, :2].tolist() == [1.0, 1.0] and adv[2, 0].item() == 1.0
    assert adv[3].abs().sum().item() == 0.0
    # The row reward sits on the last response token (verl's token_level_scores convention).
    assert data.batch["token_level_scores"][1].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    # raft: the distill row is trained by policy gradient with advantage max(r2, 0) = 1.
    data2, _ = episodes_to_dataproto(_episodes(), PAD)
    add_advantages(data2, distill_mode="raft")
    assert data2.batch["advantages"][3, 0].item() == 1.0


def test_padding_rows_train_nothing_and_engine_layout():
    data, _ = episodes_to_dataproto(_episodes(), PAD)
    add_advantages(data)
    padded, extra = pad_to_multiple(data, 4)
    assert extra == 3 and len(padded) == 8  # 5 rows -> 8 for 4 data-parallel ranks
    assert padded.batch["response_mask"][5:].sum().item() == 0
    assert padded.batch["advantages"][5:].abs().sum().item() == 0
    assert list(padded.non_tensor_batch["uid"][5:]) == ["__pad__"] * 3
    same, none = pad_to_multiple(data, 5)
    assert none == 0 and len(same) == 5
    td = to_engine_tensordict(padded, temperature=0.7)
    # verl's no-padding layout: input_ids nested, one sequence per row of its real tokens only
    lens = td["input_ids"].offsets().diff().tolist()
    assert lens[:5] == [7, 3, 3, 3, 3]
    assert np.isclose(td["temperature"], 0.7)
