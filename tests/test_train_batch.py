"""The step's rollout batch (vlmrl/train/batch.py): padded once, cut into micro-batches whose values equal the
left-padded tensors of their rows alone, and micro-batches that keep a group's rows together by group id."""

import torch

from vlmrl.rollout.trajectory import Trajectory
from vlmrl.train.batch import RolloutBatch, left_pad, micro_batches


def _traj(n_prompt, n_resp, group_id, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 99, (n_prompt + n_resp,), generator=g).tolist()
    logp = [0.0] * n_prompt + (-torch.rand(n_resp, generator=g)).tolist()
    return Trajectory(prompt_index=0, sample_index=0, sample_id="s", question="q", answer="a", answer_type="text",
                      ids=ids, response_mask=[0] * n_prompt + [1] * n_resp, turn_ids=[-1] * n_prompt + [0] * n_resp,
                      logprobs=logp, prompt_len=n_prompt, group_id=group_id)


def test_left_pad_layout():
    out = left_pad([[1.0, 2.0], [3.0], []], -1.0)
    assert out.tolist() == [[1.0, 2.0], [-1.0, 3.0], [-1.0, -1.0]]


def test_batch_rows_equal_the_padded_tensors_of_those_rows_alone():
    trajs = [_traj(4, 3, 0, 1), _traj(4, 6, 0, 2), _traj(2, 1, 1, 3), _traj(5, 5, 2, 4), _traj(5, 2, 2, 5)]
    batch = RolloutBatch.from_trajectories(trajs, [True, True, False, True, True])
    assert batch.old_logp.shape == (5, 10) and batch.group_ids.tolist() == [0, 0, 1, 2, 2]
    assert batch.loss_mask[2].sum() == 0 and torch.equal(batch.loss_mask[3], batch.response_mask[3])
    for rows in ([0, 2], [4, 1], [2], [3, 4, 0]):
        sub = [trajs[i] for i in rows]
        assert torch.equal(batch.take(batch.old_logp, rows), left_pad([t.logprobs for t in sub]))
        assert torch.equal(batch.take(batch.turn_ids, rows), left_pad([t.turn_ids for t in sub], -1, torch.long))
        want = left_pad([t.response_mask for t in sub], 0, torch.long)
        assert torch.equal(batch.take(batch.response_mask, rows), want)
    assert batch.row(batch.old_logp, 2) == trajs[2].logprobs and batch.row(batch.turn_ids, 1) == trajs[1].turn_ids
    out = torch.zeros(5, 10)
    batch.put(out, [2, 4], batch.take(batch.old_logp, [2, 4]) + 1.0)  # only those rows' own tokens are written
    assert batch.row(out, 2) == [x + 1.0 for x in trajs[2].logprobs] and out[2, :7].eq(0).all()
    assert out[[0, 1, 3]].eq(0).all()


def test_micro_batches_keep_groups_together():
    lengths = [9, 3, 7, 5, 8, 2, 6, 4]  # two groups of 4, by trajectory index
    idx = [5, 0, 7, 2, 1, 6, 3, 4]  # a shuffled mini-batch
    together = micro_batches(idx, lengths, 4, groups=[i // 4 for i in range(8)])
    assert [sorted(idx[k] // 4 for k in c) for c in together] == [[0] * 4, [1] * 4]
    assert [[lengths[idx[k]] for k in c] for c in together] == [[3, 5, 7, 9], [2, 4, 6, 8]]
    by_length = micro_batches(idx, lengths, 4)
    assert [[lengths[idx[k]] for k in c] for c in by_length] == [[2, 3, 4, 5], [6, 7, 8, 9]]
    assert sorted(k for c in together for k in c) == list(range(8))


def test_micro_batches_follow_group_ids_not_positions():
    # unequal, interleaved groups: ids 7 (rows 0, 3, 4), 2 (rows 1, 5) and 9 (row 2)
    groups = [7, 2, 9, 7, 7, 2]
    lengths = [5, 4, 1, 3, 6, 2]
    chunks = micro_batches(list(range(6)), lengths, 3, groups)
    assert [[groups[k] for k in c] for c in chunks] == [[2, 2, 7], [7, 7, 9]]
    assert chunks == [[5, 1, 3], [0, 4, 2]]  # by group id, then by length within a group
