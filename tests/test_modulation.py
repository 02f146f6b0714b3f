import math

import pytest
import torch

from trl_empg.modulation import empg_step_advantages, empg_terms, f, g, next_step_index, normalized_entropy
from trl_empg.segmentation import StepLayout, step_ids_from_mask


def _batch(seed: int = 0, trajectories: int = 5, max_steps: int = 6):
    generator = torch.Generator().manual_seed(seed)
    traj, step = [], []
    for i in range(trajectories):
        n = int(torch.randint(1, max_steps + 1, (1,), generator=generator))
        traj += [i] * n
        step += list(range(n))
    traj, step = torch.tensor(traj), torch.tensor(step)
    adv_per_traj = torch.randn(trajectories, generator=generator, dtype=torch.float64)
    entropies = torch.rand(len(traj), generator=generator, dtype=torch.float64) * 3
    return adv_per_traj[traj], entropies, traj, step


def test_g_has_batch_mean_one_before_centering():
    adv, ent, traj, step = _batch()
    terms = empg_terms(adv, ent, traj, step)
    assert terms.g.mean().item() == pytest.approx(1.0, abs=1e-12)
    # Low-entropy steps get g > 1, high-entropy steps g < 1.
    assert terms.g[ent.argmin()] > 1 > terms.g[ent.argmax()]


def test_last_step_gets_no_bonus_and_others_get_next_steps_clarity():
    adv, ent, traj, step = _batch(seed=1)
    terms = empg_terms(adv, ent, traj, step, zeta=0.3)
    hn = normalized_entropy(ent)
    for n in range(len(traj)):
        is_last = step[n] == step[traj == traj[n]].max()
        if is_last:
            assert terms.future_clarity_bonus[n] == 0
        else:
            nxt = ((traj == traj[n]) & (step == step[n] + 1)).nonzero().item()
            assert terms.future_clarity_bonus[n].item() == pytest.approx(0.3 * math.exp(-hn[nxt].item()))


def test_centered_mean_is_zero_and_no_std_division():
    adv, ent, traj, step = _batch(seed=2)
    terms = empg_terms(adv, ent, traj, step)
    assert terms.advantages.mean().item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(terms.advantages, terms.modulated - terms.modulated.mean())
    uncentered = empg_step_advantages(adv, ent, traj, step, center=False)
    torch.testing.assert_close(uncentered, terms.modulated)


def test_permuting_rows_permutes_output():
    adv, ent, traj, step = _batch(seed=3, trajectories=7)
    out = empg_step_advantages(adv, ent, traj, step)
    perm = torch.randperm(len(traj), generator=torch.Generator().manual_seed(0))
    out_perm = empg_step_advantages(adv[perm], ent[perm], traj[perm], step[perm])
    torch.testing.assert_close(out_perm, out[perm])


def test_all_equal_entropies_give_g_one():
    adv, _, traj, step = _batch(seed=4)
    terms = empg_terms(adv, torch.full_like(adv, 0.7), traj, step)
    torch.testing.assert_close(terms.g, torch.ones_like(adv))


def test_k_zero_zeta_zero_no_centering_is_grpo():
    adv, ent, traj, step = _batch(seed=5)
    out = empg_step_advantages(adv, ent, traj, step, k=0.0, zeta=0.0, center=False)
    torch.testing.assert_close(out, adv)


def test_hand_computed_case():
    # Two trajectories: A = +1 with steps H = [0, 2], A = -1 with one step H = [1].
    adv = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    ent = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)
    traj = torch.tensor([0, 0, 1])
    step = torch.tensor([0, 1, 0])
    eps = 1e-8
    hn = [0.0, 2.0 / (2.0 + eps), 1.0 / (2.0 + eps)]
    w = [math.exp(-h) for h in hn]
    mean_w = sum(w) / 3
    gs = [x / mean_w for x in w]
    bonus = [0.1 * math.exp(-hn[1]), 0.0, 0.0]
    a_mod = [gs[0] * 1 + bonus[0], gs[1] * 1, gs[2] * -1]
    mean_mod = sum(a_mod) / 3
    expected = torch.tensor([a - mean_mod for a in a_mod], dtype=torch.float64)
    torch.testing.assert_close(empg_step_advantages(adv, ent, traj, step), expected)
    # Same batch, rows shuffled and trajectory ids arbitrary.
    order = [2, 0, 1]
    out = empg_step_advantages(adv[order], ent[order], torch.tensor([9, 4, 4]), step[order])
    torch.testing.assert_close(out, expected[order])


def test_building_blocks():
    hn = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(f(hn, 2.0), torch.exp(-2.0 * hn))
    torch.testing.assert_close(g(hn, 1.0).mean(), torch.tensor(1.0))
    torch.testing.assert_close(
        next_step_index(torch.tensor([3, 3, 1, 3]), torch.tensor([2, 0, 0, 1])), torch.tensor([-1, 3, -1, 0])
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="once"):
        next_step_index(torch.tensor([0, 0]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="1-D"):
        empg_step_advantages(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    assert empg_step_advantages(*(torch.zeros(0),) * 4).numel() == 0


def test_step_ids_from_mask_runs():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1], [0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
    expected = torch.tensor([[0, 0, -1, -1, 1, -1, 2, 2], [-1, 0, 0, 0, -1, -1, -1, -1], [-1] * 8])
    torch.testing.assert_close(step_ids_from_mask(mask), expected)


def test_step_layout_mean_and_scatter_round_trip():
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]])
    step_ids = step_ids_from_mask(mask)
    layout = StepLayout.from_step_ids(step_ids)
    assert layout.rows.tolist() == [0, 0, 1] and layout.steps.tolist() == [0, 1, 0]
    values = torch.tensor([[1.0, 3.0, 9.0, 5.0, 9.0], [7.0, 9.0, 9.0, 9.0, 9.0]])
    torch.testing.assert_close(layout.mean(values), torch.tensor([2.0, 5.0, 7.0]))
    tokens = layout.to_tokens(torch.tensor([10.0, 20.0, 30.0]))
    torch.testing.assert_close(tokens, torch.tensor([[10.0, 10.0, 0.0, 20.0, 0.0], [30.0, 0.0, 0.0, 0.0, 0.0]]))
