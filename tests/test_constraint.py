"""Target shares (attreg.constraint): the dual-ascent update's axioms, the settings'
checks, and training that reaches a stated share whatever the ground truth's size."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attreg
from attreg.constraint import ShareConstraint, ShareTarget, dual_ascent_step

shares = st.floats(0.0, 1.0, allow_nan=False)


@settings(deadline=None, max_examples=200)
@given(
    target=st.floats(0.01, 0.99),
    share=shares,
    average=shares,
    log_w=st.floats(math.log(1e-3), math.log(1e3)),
    rate=st.floats(1e-4, 1.0),
    smoothing=st.floats(0.0, 0.99),
    first=st.booleans(),
)
def test_dual_ascent_moves_the_weight_toward_the_target_within_its_bounds(
    target, share, average, log_w, rate, smoothing, first
):
    s = ShareTarget(target, rate=rate, smoothing=smoothing)
    lm0 = torch.tensor(log_w, dtype=torch.float64)
    avg0 = torch.tensor(average, dtype=torch.float64)
    share_t = torch.tensor(share, dtype=torch.float64)
    lm, avg = dual_ascent_step(lm0, avg0, share_t, s, first=first)
    # pure: the inputs are unchanged
    assert float(lm0) == log_w and float(avg0) == average
    # the average is the share itself at first, else between the old average and the share
    if first:
        assert float(avg) == pytest.approx(share)
    else:
        lo, hi = min(share, average), max(share, average)
        assert lo - 1e-12 <= float(avg) <= hi + 1e-12
    # below the target the weight does not fall, above it it does not rise
    if float(avg) < target:
        assert float(lm) >= log_w - 1e-12 or float(lm) == pytest.approx(math.log(s.max_weight))
    elif float(avg) > target:
        assert float(lm) <= log_w + 1e-12 or float(lm) == pytest.approx(math.log(s.min_weight))
    assert math.log(s.min_weight) - 1e-12 <= float(lm) <= math.log(s.max_weight) + 1e-12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target=0.0), "target share must be in \\(0, 1\\)"),
        (dict(target=1.0), "target share must be in \\(0, 1\\)"),
        (dict(target=float("nan")), "target must be finite"),
        (dict(target=0.5, rate=0.0), "rate must be > 0"),
        (dict(target=0.5, smoothing=1.0), "smoothing must be in \\[0, 1\\)"),
        (dict(target=0.5, initial_weight=5e3), "min_weight <= initial_weight <= max_weight"),
        (dict(target=0.5, min_weight=0.0), "0 < min_weight"),
    ],
)
def test_share_target_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShareTarget(**kwargs)


def test_share_constraint_takes_share_target_settings_only():
    with pytest.raises(TypeError, match="settings must be a ShareTarget"):
        ShareConstraint(0.9)  # type: ignore[arg-type]


def test_share_target_refuses_non_numbers():
    with pytest.raises(TypeError, match="target must be a number"):
        ShareTarget("0.9")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rate must be a number"):
        ShareTarget(0.9, rate=True)


def _model(d: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 1))


def test_target_share_needs_the_share_loss():
    model = _model(6)
    gt = torch.tensor([1.0, 1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="reparameterizer='share' and loss='outside_share'"):
        attreg.AttributionPrior(model, gt, target_share=0.8)  # sigmoid + mse by default
    with pytest.raises(TypeError, match="target_share must be a number in \\(0, 1\\)"):
        attreg.AttributionPrior(
            model, gt, reparameterizer="share", loss="outside_share", target_share="high"
        )
    with pytest.raises(ValueError, match="weight is the multiplier's starting value"):
        attreg.AttributionPrior(
            model, gt, reparameterizer="share", loss="outside_share", target_share=0.8,
            weight=0.0,
        )


def _share_prior(model, gt, target, **kw):
    return attreg.AttributionPrior(
        model, gt, reparameterizer="share", loss="outside_share", target_share=target,
        generator=torch.Generator().manual_seed(0), **kw,
    )


def _gt_share(prior, x) -> float:
    """Mean GT share of the prior's own attributions (what the target constrains), in
    evaluation mode: the multiplier is left alone."""
    was = prior.training
    prior.eval()
    try:
        a = prior.attributions(x).detach().abs()
    finally:
        prior.train(was)
    gt = prior.ground_truth
    return float(((a * gt).sum(1) / a.sum(1).clamp_min(1e-12)).mean())


def _train(model, prior, d, steps=700, seed=0, constraint=None):
    """A task that uses every feature alike: y = sum_j x_j; returns the constraint's
    (multiplier, share average) after every step when ``constraint`` is given."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    trace = []
    for _ in range(steps):
        x = torch.randn(128, d, generator=g)
        y = x.sum(1, keepdim=True)
        loss = nn.functional.mse_loss(model(x), y) + prior(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if constraint is not None:
            trace.append((constraint.multiplier, float(constraint.share_average)))
    return trace


@pytest.mark.parametrize("n_gt", [3, 15])
def test_training_reaches_the_target_share_whatever_the_gt_size(n_gt):
    """A fixed weight gives a small GT a small share; a target share reaches the target
    for a GT of 3 of 30 features (10% of a uniform attribution) and of 15 (50%), with a
    multiplier that settles (no oscillation)."""
    d, target = 30, 0.8
    gt = torch.zeros(d)
    gt[:n_gt] = 1.0
    model = _model(d)
    prior = _share_prior(model, gt, target)
    x = torch.randn(2048, d, generator=torch.Generator().manual_seed(7))
    before = _gt_share(prior, x)
    trace = _train(model, prior, d, steps=800, constraint=prior.constraint)
    reached = _gt_share(prior, x)
    assert before < target - 0.2  # the untrained share is about the GT's size share
    assert reached == pytest.approx(target, abs=0.05), (n_gt, reached)
    tail = trace[-200:]
    weights = [w for w, _ in tail]
    assert max(weights) / min(weights) < 1.5, weights[::25]  # settled, not oscillating
    # the share's moving average stays near the target over the last 200 steps, and on
    # the target on average (bounds with room for float rounding across machines; an
    # oscillating multiplier swings it by far more)
    shares = [s for _, s in tail]
    assert all(abs(s - target) < 0.08 for s in shares), shares[::25]
    assert abs(sum(shares) / len(shares) - target) < 0.05, shares[::25]


def test_a_fixed_weight_does_not_adapt_to_the_gt_size():
    """The contrast that motivates target shares, in the same task: one fixed weight
    gives the 3-feature GT a far smaller share than the 15-feature one."""
    d = 30
    reached = {}
    for n_gt in (3, 15):
        gt = torch.zeros(d)
        gt[:n_gt] = 1.0
        model = _model(d)
        prior = attreg.AttributionPrior(
            model, gt, reparameterizer="share", loss="outside_share", weight=1.0,
            generator=torch.Generator().manual_seed(0),
        )
        _train(model, prior, d, steps=400)
        x = torch.randn(2048, d, generator=torch.Generator().manual_seed(7))
        reached[n_gt] = _gt_share(prior, x)
    assert reached[15] - reached[3] > 0.2, reached


def test_an_unreachable_target_stops_at_the_cap_and_says_so():
    d = 30
    gt = torch.zeros(d)
    gt[:3] = 1.0
    model = _model(d)
    cap = ShareTarget(0.95, initial_weight=0.05, min_weight=0.01, max_weight=0.1, rate=0.2)
    prior = attreg.PriorSet({"small_set": _share_prior(model, gt, cap, weight=0.05)})
    inner = prior.priors["small_set"]
    with pytest.warns(UserWarning, match="prior 'small_set': target share 0.95 not reached") as rec:
        _train(model, prior, d, steps=500)
    assert inner.constraint.multiplier == pytest.approx(0.1)
    message = str(rec[0].message)
    assert "max_weight=0.1" in message and "the GT share is 0." in message
    # the task kept its weight: the fit is far better than the prior's all-GT solution
    x = torch.randn(512, d, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)))
    assert mse < 0.25 * d * (1 - 3 / d)


def test_eval_mode_and_no_training_calls_leave_the_multiplier_alone():
    d = 8
    gt = torch.tensor([1.0, 1, 0, 0, 0, 0, 0, 0])
    model = _model(d)
    prior = _share_prior(model, gt, 0.9)
    x = torch.randn(64, d)
    prior(x)
    state = {k: v.clone() for k, v in prior.state_dict().items()}
    assert prior.constraint.state()["steps"] == 1
    prior.eval()
    prior(x)
    for k, v in prior.state_dict().items():
        assert torch.equal(v, state[k]), k
    prior.train()
    prior(x)
    assert prior.constraint.state()["steps"] == 2


def test_the_multiplier_travels_with_the_state_dict_and_scales_the_loss():
    d = 8
    gt = torch.tensor([1.0, 1, 0, 0, 0, 0, 0, 0])
    model = _model(d)
    prior = _share_prior(model, gt, 0.9, weight=2.0)
    x = torch.randn(64, d)
    fixed = attreg.AttributionPrior(
        model, gt, reparameterizer="share", loss="outside_share", weight=2.0,
        generator=torch.Generator().manual_seed(0),
    )
    # the first call: the starting weight times the shortfall beyond 1 - target (the
    # constraint's exact penalty), where a fixed weight takes the whole outside share
    assert torch.allclose(prior(x), fixed(x) - 2.0 * (1 - 0.9))
    for _ in range(20):
        prior(x)
    copy = _share_prior(model, gt, 0.9, weight=2.0)
    copy.load_state_dict(prior.state_dict())
    assert copy.constraint.state() == prior.constraint.state()
    assert copy.constraint.multiplier > 2.0  # the share of an untrained model is below 0.9


def test_each_prior_of_a_set_reaches_its_own_target():
    d, targets = 30, {"a": 0.5, "b": 0.3}
    gts = {"a": torch.zeros(d), "b": torch.zeros(d)}
    gts["a"][:3] = 1.0
    gts["b"][3:6] = 1.0
    model = _model(d)
    priors = attreg.PriorSet({n: _share_prior(model, gts[n], t) for n, t in targets.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both targets are reachable: no cap warning
        _train(model, priors, d, steps=800)
    x = torch.randn(2048, d, generator=torch.Generator().manual_seed(7))
    for name, target in targets.items():
        reached = _gt_share(priors.priors[name], x)
        assert reached == pytest.approx(target, abs=0.05), (name, reached)


def _rank_update(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        c = ShareConstraint(ShareTarget(0.9, rate=0.5))
        c.update(torch.tensor([0.2, 0.6][rank]))  # each rank sees its own minibatch
        out.put((rank, float(c.log_multiplier), float(c.share_average)))
    finally:
        dist.destroy_process_group()


def test_ranks_of_a_distributed_run_hold_one_multiplier():
    """Under torch.distributed the share is averaged over the ranks before the update:
    both ranks end with the multiplier of the mean share (0.4), not of their own."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank_update, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected, _ = dual_ascent_step(
        torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
        torch.tensor(0.4, dtype=torch.float64), ShareTarget(0.9, rate=0.5), first=True,
    )
    for _, log_multiplier, average in results:
        assert log_multiplier == pytest.approx(float(expected))
        assert average == pytest.approx(0.4)


def test_a_multiplier_that_touches_the_cap_briefly_is_not_warned_about():
    settings = ShareTarget(0.9, initial_weight=1.0, max_weight=2.0, rate=0.5, smoothing=0.0)
    c = ShareConstraint(settings, name="brief")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(120):  # at the cap, short of the target: 2 checks, not 4
            c.update(torch.tensor(0.3))
        assert c.multiplier == pytest.approx(2.0)
        for i in range(300):  # at the cap, the share rising slowly: the model catches up
            c.update(torch.tensor(0.3 + 0.5 * i / 300))
        assert c.multiplier == pytest.approx(2.0)
        for _ in range(200):  # and reaches the target
            c.update(torch.tensor(0.95))
    with pytest.warns(UserWarning, match="prior 'brief': target share 0.9 not reached"):
        for _ in range(400):  # now short of the target for good
            c.update(torch.tensor(0.3))


def test_evaluation_calls_weight_the_shortfall_by_the_starting_weight():
    d = 8
    gt = torch.tensor([1.0, 1, 0, 0, 0, 0, 0, 0])
    model = _model(d)
    prior = _share_prior(model, gt, 0.9, weight=2.0)
    x = torch.randn(64, d)
    for _ in range(30):  # the multiplier rises above 2
        prior(x)
    assert prior.constraint.multiplier > 2.5
    prior.eval()
    fixed = attreg.AttributionPrior(
        model, gt, reparameterizer="share", loss="outside_share", weight=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    fixed.eval()
    prior.generator.manual_seed(5)
    fixed.generator.manual_seed(5)
    assert torch.allclose(prior(x), 2.0 * torch.relu(fixed(x) - (1 - 0.9)))
