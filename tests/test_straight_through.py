"""Straight-through estimators (MERGE M1/M2/M3, concept C2, planner P4): hard forward, soft gradient."""

import ast
import inspect
import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import genlab.straight_through as st_module
from genlab.straight_through import (
    bernoulli_st,
    bottomk_st,
    differentiable_topk,
    gumbel_sigmoid_st,
    gumbel_softmax_st,
    multinomial_st,
    soft_deletion_weights,
    straight_through,
)


def _logits(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).requires_grad_()


def _grad_of(out, x, seed=1):
    """d/dx of a generic loss (out * random weights).sum()."""
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    return grad


def _is_binary(t):
    return bool(((t == 0) | (t == 1)).all())


# -- the trick itself ----------------------------------------------------------------------------------------
def test_straight_through_forward_is_exactly_hard_and_gradient_is_softs():
    soft = torch.tensor([0.3, 0.7, 0.1], requires_grad=True)
    hard = torch.tensor([1.0, 0.0, 1.0])
    out = straight_through(hard, soft)
    assert torch.equal(out, hard)  # exact: 1 + 0.3 - 0.3 would not be
    (grad,) = torch.autograd.grad((out * torch.tensor([2.0, 3.0, 4.0])).sum(), soft)
    assert torch.equal(grad, torch.tensor([2.0, 3.0, 4.0]))


def test_module_imports_only_torch_and_the_standard_library():
    """It travels with checkpoints as remote code, where genlab and transformers may be absent."""
    tree = ast.parse(inspect.getsource(st_module))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots - {"torch", "__future__"} <= set(sys.stdlib_module_names), roots


# -- M1 gate -------------------------------------------------------------------------------------------------
def test_gumbel_sigmoid_gate_is_binary_and_gradient_reaches_logits():
    x = _logits(4, 16)
    out = gumbel_sigmoid_st(x, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert _is_binary(out)
    grad = _grad_of(out, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gumbel_sigmoid_noise_off_is_sign_of_logits_with_sigmoid_gradient():
    x = _logits(3, 8)
    out = gumbel_sigmoid_st(x, tau=0.5, noise=False)
    assert torch.equal(out, (x > 0).float())
    expected = _grad_of(torch.sigmoid(x / 0.5), x)
    torch.testing.assert_close(_grad_of(out, x), expected)


def test_gumbel_sigmoid_fires_with_probability_sigmoid_of_logits():
    x = torch.tensor([-1.0, 0.0, 2.0]).expand(20000, 3)
    rate = gumbel_sigmoid_st(x, tau=1.0, generator=torch.Generator().manual_seed(0)).mean(0)
    torch.testing.assert_close(rate, torch.sigmoid(x[0]), atol=0.02, rtol=0)


# -- C2 / P4 concept choice ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [-1, 1])
def test_gumbel_softmax_gives_one_hot_rows_along_dim(dim):
    x = _logits(2, 5, 7)
    out = gumbel_softmax_st(x, tau=1.0, dim=dim, generator=torch.Generator().manual_seed(0))
    assert _is_binary(out) and torch.equal(out.sum(dim), torch.ones_like(out.sum(dim)))
    grad = _grad_of(out, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gumbel_softmax_noise_off_picks_argmax_with_softmax_gradient():
    x = _logits(4, 9)
    out = gumbel_softmax_st(x, tau=0.7, noise=False)
    assert torch.equal(out.argmax(-1), x.argmax(-1)) and torch.equal(out.sum(-1), torch.ones(4))
    torch.testing.assert_close(_grad_of(out, x), _grad_of(torch.softmax(x / 0.7, -1), x))


def test_gumbel_softmax_samples_follow_softmax_of_logits():
    x = torch.tensor([0.0, 1.0, -1.0, 0.5]).expand(20000, 4)
    freq = gumbel_softmax_st(x, tau=1.0, generator=torch.Generator().manual_seed(0)).mean(0)
    torch.testing.assert_close(freq, torch.softmax(x[0], -1), atol=0.02, rtol=0)


def test_gumbel_softmax_is_exact_for_bfloat16_huge_logits_and_tiny_tau():
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=torch.bfloat16, requires_grad=True)
    out = gumbel_softmax_st(x, tau=1e-6, noise=False)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
    assert torch.isfinite(_grad_of(out, x).float()).all()


# -- M2 mask picker ------------------------------------------------------------------------------------------
def test_soft_deletion_weights_are_sigmoid_of_minus_score_over_tau():
    s = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(soft_deletion_weights(s, 0.5), torch.sigmoid(-s / 0.5))
    extreme = soft_deletion_weights(torch.tensor([-1e4, 1e4], requires_grad=True), 1e-6)
    assert torch.equal(extreme, torch.tensor([1.0, 0.0]))


def test_bottomk_deletes_exactly_k_lowest_per_row_with_per_row_k_and_padding():
    scores = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0], [0.5, -1.0, 9.0, -9.0, -8.0]], requires_grad=True)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])  # row 1: last two are padding
    out = bottomk_st(scores, torch.tensor([2, 2]), tau=1.0, valid_mask=valid)
    assert torch.equal(out, torch.tensor([[0.0, 1, 0, 1, 0], [1, 1, 0, 0, 0]]))
    grad = _grad_of(out, scores)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (grad[1, 3:] == 0).all()  # padding gets no gradient


def test_bottomk_with_k_above_valid_count_selects_every_valid_position_only():
    scores = torch.randn(3, 6)
    valid = torch.arange(6) < torch.tensor([[0], [2], [6]])
    out = bottomk_st(scores, 4, tau=1.0, valid_mask=valid)
    assert torch.equal(out.sum(-1), torch.tensor([0.0, 2.0, 4.0]))
    assert not out[~valid].any()


def test_bernoulli_picker_samples_with_probability_p_and_gradient_of_p():
    p = torch.tensor([0.0, 0.2, 0.7, 1.0]).expand(20000, 4).clone().requires_grad_()
    out = bernoulli_st(p, generator=torch.Generator().manual_seed(0))
    assert _is_binary(out)
    assert (out[:, 0] == 0).all() and (out[:, 3] == 1).all()
    torch.testing.assert_close(out.mean(0), p[0].detach(), atol=0.02, rtol=0)
    weights = torch.randn(out.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), p)
    assert torch.equal(grad, weights)


def test_bernoulli_from_logits_noise_off_is_logits_positive_with_sigmoid_gradient():
    x = _logits(3, 10)
    out = bernoulli_st(logits=x, noise=False)
    assert torch.equal(out, (x > 0).float())
    torch.testing.assert_close(_grad_of(out, x), _grad_of(torch.sigmoid(x), x))


def test_bernoulli_needs_exactly_one_of_probs_and_logits():
    with pytest.raises(ValueError, match="exactly one"):
        bernoulli_st()
    with pytest.raises(ValueError, match="exactly one"):
        bernoulli_st(torch.rand(3), logits=torch.randn(3))


# -- M3 mask inserter ----------------------------------------------------------------------------------------
def test_multinomial_counts_are_integers_summing_to_per_row_k_and_skip_padding():
    x = _logits(4, 9)
    k = torch.tensor([0, 1, 5, 23])
    valid = torch.arange(9) < torch.tensor([[9], [3], [1], [7]])
    out = multinomial_st(x, k, tau=1.0, valid_mask=valid, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, out.round()) and (out >= 0).all()
    assert torch.equal(out.sum(-1), k.float())
    assert not out[~valid].any()
    grad = _grad_of(out, x)
    assert torch.isfinite(grad).all() and grad[1:].abs().sum() > 0
    assert (grad[0] == 0).all()  # k = 0: nothing to move


def test_multinomial_mean_counts_are_k_times_softmax():
    x = torch.tensor([0.0, 1.0, -0.5]).expand(5000, 3)
    mean = multinomial_st(x, 4, tau=1.0, generator=torch.Generator().manual_seed(0)).mean(0)
    torch.testing.assert_close(mean, 4 * torch.softmax(x[0], -1), atol=0.05, rtol=0)


def test_multinomial_noise_off_rounds_expected_counts_by_largest_remainder():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]])
    x = probs.log().requires_grad_()
    out = multinomial_st(x, torch.tensor([4, 2]), tau=2.0, noise=False)
    # row 0: 4p = [2, 1.2, 0.8] -> [2, 1, 1]; row 1: 2p = [.5, .5, 1] -> tie goes to the lower index
    assert torch.equal(out, torch.tensor([[2.0, 1, 1], [1, 0, 1]]))
    expected = _grad_of(torch.tensor([[4.0], [2.0]]) * torch.softmax(x / 2.0, -1), x)
    torch.testing.assert_close(_grad_of(out, x), expected)


def test_multinomial_row_without_valid_gap_gets_no_counts():
    valid = torch.tensor([[False, False], [True, False]])
    out = multinomial_st(torch.zeros(2, 2), 3, tau=1.0, valid_mask=valid)
    assert torch.equal(out, torch.tensor([[0.0, 0], [3, 0]]))


def test_topk_inserter_selects_exactly_k_highest_with_gradient():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, -2.0, 1.0, 0.0]], requires_grad=True)
    out = differentiable_topk(scores, torch.tensor([2, 1]), tau=0.5)
    assert torch.equal(out, torch.tensor([[0.0, 1, 0, 1], [1, 0, 0, 0]]))
    grad = _grad_of(out, scores)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_topk_relaxation_is_shift_invariant_like_the_hard_mask():
    scores = _logits(2, 7)
    out = differentiable_topk(scores, 3, tau=1.0)
    (grad,) = torch.autograd.grad(out.sum(), scores)  # the mask always has 3 ones: moving all scores does nothing
    torch.testing.assert_close(grad.sum(-1), torch.zeros(2), atol=1e-6, rtol=0)


def test_bottomk_and_topk_ties_go_to_lower_index():
    scores = torch.zeros(1, 5)
    assert torch.equal(bottomk_st(scores, 2, 1.0), torch.tensor([[1.0, 1, 0, 0, 0]]))
    assert torch.equal(differentiable_topk(scores, 3, 1.0), torch.tensor([[1.0, 1, 1, 0, 0]]))


# -- reproducibility and errors -------------------------------------------------------------------------------
SAMPLERS = {
    "gumbel_sigmoid": lambda x, **kw: gumbel_sigmoid_st(x, 0.5, **kw),
    "gumbel_softmax": lambda x, **kw: gumbel_softmax_st(x, 0.5, **kw),
    "multinomial": lambda x, **kw: multinomial_st(x, 6, 0.5, **kw),
    "bernoulli": lambda x, **kw: bernoulli_st(logits=x, **kw),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_seeded_generator_reproduces_samples_and_noise_off_is_repeatable(name):
    sample, x = SAMPLERS[name], _logits(4, 30).detach()
    first = sample(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, sample(x, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(first, sample(x, generator=torch.Generator().manual_seed(8)))
    assert torch.equal(sample(x, noise=False), sample(x, noise=False))


def test_bad_arguments_say_what_is_allowed():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="tau must be > 0"):
        gumbel_softmax_st(x, 0.0)
    with pytest.raises(ValueError, match="k must be >= 0"):
        bottomk_st(x, -1, 1.0)
    with pytest.raises(ValueError, match="one per row"):
        multinomial_st(x, torch.tensor([1, 2, 3]), 1.0)
    with pytest.raises(TypeError, match="integer tensor"):
        differentiable_topk(x, torch.tensor([1.0, 2.0]), 1.0)
    with pytest.raises(ValueError, match="valid_mask"):
        bottomk_st(x, 1, 1.0, valid_mask=torch.ones(2, 3, dtype=torch.bool))


# -- properties over shapes, k, temperatures and logit scales ---------------------------------------------------
@st.composite
def row_problems(draw):
    """(scores, k per row, valid mask, tau) with batch 1-4, length 1-40, tau 1e-6..10, |scores| up to 1e4."""
    batch, length = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    tau = 10.0 ** draw(st.floats(-6, 1))
    scale = 10.0 ** draw(st.floats(-3, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scores = torch.randn(batch, length, generator=g) * scale
    if draw(st.booleans()):  # saturate some entries at exactly +-1e4
        scores = torch.where(torch.rand(batch, length, generator=g) < 0.3, torch.sign(scores) * 1e4, scores)
    if draw(st.booleans()):  # ties
        scores = scores.round()
    n_valid = torch.randint(0, length + 1, (batch,), generator=g)
    valid = torch.arange(length) < n_valid.unsqueeze(-1)
    k = torch.randint(0, length + 1, (batch,), generator=g)
    return scores.requires_grad_(), k, valid, tau


def _assert_finite_with_finite_grad(out, x):
    assert torch.isfinite(out).all()
    assert torch.isfinite(_grad_of(out, x)).all()


@settings(deadline=None, max_examples=60)
@given(row_problems(), st.booleans())
def test_property_topk_and_bottomk_select_min_k_nvalid_extremes(problem, lowest):
    scores, k, valid, tau = problem
    op = bottomk_st if lowest else differentiable_topk
    out = op(scores, k, tau, valid_mask=valid)
    _assert_finite_with_finite_grad(out, scores)
    assert _is_binary(out) and not out[~valid].any()
    assert torch.equal(out.sum(-1), torch.minimum(k, valid.sum(-1)).float())
    key = -scores.detach() if lowest else scores.detach()  # selected ones must beat every unselected valid one
    chosen = out.bool()
    worst_chosen = key.masked_fill(~chosen, math.inf).amin(-1)
    best_left = key.masked_fill(chosen | ~valid, -math.inf).amax(-1)
    assert (worst_chosen >= best_left).all()


@settings(deadline=None, max_examples=60)
@given(row_problems(), st.booleans(), st.integers(0, 2**31 - 1))
def test_property_multinomial_counts_sum_exactly_to_k(problem, noise, seed):
    logits, k, valid, tau = problem
    out = multinomial_st(logits, k, tau, valid_mask=valid, noise=noise, generator=torch.Generator().manual_seed(seed))
    _assert_finite_with_finite_grad(out, logits)
    assert torch.equal(out, out.round()) and (out >= 0).all() and not out[~valid].any()
    assert torch.equal(out.sum(-1), torch.where(valid.any(-1), k, 0).float())


@settings(deadline=None, max_examples=60)
@given(row_problems(), st.booleans(), st.integers(0, 2**31 - 1))
def test_property_gumbel_ops_and_bernoulli_stay_hard_and_finite(problem, noise, seed):
    logits, _, _, tau = problem
    kw = dict(noise=noise, generator=torch.Generator().manual_seed(seed))
    gate = gumbel_sigmoid_st(logits, tau, **kw)
    _assert_finite_with_finite_grad(gate, logits)
    assert _is_binary(gate)
    for dim in (-1, 0):
        one_hot = gumbel_softmax_st(logits, tau, dim=dim, **kw)
        _assert_finite_with_finite_grad(one_hot, logits)
        assert _is_binary(one_hot) and torch.equal(one_hot.sum(dim), torch.ones_like(one_hot.sum(dim)))
        if not noise:
            assert torch.equal(one_hot.argmax(dim), logits.argmax(dim))
    picked = bernoulli_st(logits=logits, **kw)
    _assert_finite_with_finite_grad(picked, logits)
    assert _is_binary(picked)
    p_del = soft_deletion_weights(logits, tau)
    _assert_finite_with_finite_grad(p_del, logits)
