"""Learning-rate schedules (cnnfast.optim), AdamW and label smoothing: the schedules' values step
by step against closed forms and PyTorch's formulas (written out here, not torch itself), and the
two kernels against NumPy and finite differences on every instruction set. (The training flags:
test_train_schedules.py.)"""

import math

import numpy as np
import pytest

import cnnfast.functional as F
import reference as ref
from cnnfast.nn import Parameter
from cnnfast.optim import SGD, Adam, AdamW, CosineAnnealing, OneCycleLR, StepLR

rng = np.random.default_rng(77)


def rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def an_optimizer(cls=Adam, lr=1e-3):
    return cls([Parameter(np.zeros(3))], lr=lr)


def lrs(scheduler, steps):
    """The learning rate of each of `steps` optimizer steps."""
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.lr)
        scheduler.step()
    return out


# ------------------------------------------------------------------ schedules


def torch_one_cycle(step_num, max_lr, total_steps, pct_start, div_factor=25.0, final_div_factor=1e4):
    """PyTorch's OneCycleLR.get_lr (two phases, anneal_strategy='cos'), written out: (lr, momentum)."""
    initial_lr = max_lr / div_factor
    min_lr = initial_lr / final_div_factor
    phases = [
        {"end_step": float(pct_start * total_steps) - 1, "lr": (initial_lr, max_lr), "m": (0.95, 0.85)},
        {"end_step": total_steps - 1, "lr": (max_lr, min_lr), "m": (0.85, 0.95)},
    ]

    def cos(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    start_step = 0
    for i, phase in enumerate(phases):
        end_step = phase["end_step"]
        if step_num <= end_step or i == len(phases) - 1:
            pct = (step_num - start_step) / (end_step - start_step)
            return cos(*phase["lr"], pct), cos(*phase["m"], pct)
        start_step = phase["end_step"]


@pytest.mark.parametrize("total,pct", [(100, 0.3), (37, 0.25), (10, 0.5), (469 * 2, 0.3)])
def test_one_cycle_follows_pytorch_step_by_step(total, pct):
    optimizer = an_optimizer(Adam)
    schedule = OneCycleLR(optimizer, max_lr=3e-3, total_steps=total, pct_start=pct)
    for step in range(total):
        lr, momentum = torch_one_cycle(step, 3e-3, total, pct)
        assert optimizer.lr == pytest.approx(lr, rel=1e-12, abs=1e-18), step
        assert optimizer.betas[0] == pytest.approx(momentum, rel=1e-12), step
        assert optimizer.betas[1] == 0.999
        schedule.step()
    # the ends: max_lr / 25 at the start, the peak, max_lr / 25 / 1e4 at the last step, and held after it
    assert schedule.lr_at(0) == pytest.approx(3e-3 / 25)
    assert max(schedule.lr_at(t) for t in range(total)) == pytest.approx(3e-3, rel=1e-2)  # (PyTorch: not always hit)
    assert schedule.lr_at(total - 1) == pytest.approx(3e-3 / 25 / 1e4)
    assert optimizer.lr == schedule.lr_at(total + 5) == pytest.approx(3e-3 / 25 / 1e4)


def test_one_cycle_cycles_sgd_momentum_or_leaves_it():
    optimizer = an_optimizer(SGD, lr=0.1)
    schedule = OneCycleLR(optimizer, max_lr=0.1, total_steps=20)
    assert optimizer.momentum == pytest.approx(0.95)
    momenta = [optimizer.momentum]
    for _ in range(19):
        schedule.step()
        momenta.append(optimizer.momentum)
    assert min(momenta) == pytest.approx(0.85, abs=1e-3) and momenta[-1] == pytest.approx(0.95)
    still = an_optimizer(SGD, lr=0.1)
    OneCycleLR(still, max_lr=0.1, total_steps=20, cycle_momentum=False).step()
    assert still.momentum == 0.9


@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_cosine_with_warmup_closed_form(warmup):
    total, base, floor = 40, 2e-3, 1e-5
    optimizer = an_optimizer(AdamW, lr=base)
    seen = lrs(CosineAnnealing(optimizer, total_steps=total, warmup_steps=warmup, min_lr=floor), total + 3)
    for t, lr in enumerate(seen):
        if t < warmup:
            want = base * (t + 1) / warmup
        elif t < total:
            want = floor + (base - floor) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / 2
        else:
            want = floor
        assert lr == pytest.approx(want, rel=1e-12), t
    assert max(seen) == pytest.approx(base) and seen[warmup] == pytest.approx(base)
    assert all(a >= b for a, b in zip(seen[warmup:], seen[warmup + 1 :]))  # falls after the warm-up


def test_step_decay_closed_form():
    optimizer = an_optimizer(SGD, lr=0.1)
    seen = lrs(StepLR(optimizer, step_size=3, gamma=0.5), 10)
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125], rel=1e-15)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: OneCycleLR(o, max_lr=1e-2, total_steps=30),
        lambda o: CosineAnnealing(o, total_steps=30, warmup_steps=4),
        lambda o: StepLR(o, step_size=7, gamma=0.3),
    ],
)
def test_a_loaded_state_continues_the_same_values(make):
    first = make(an_optimizer())
    straight = lrs(first, 30)
    second = make(an_optimizer())
    lrs(second, 11)
    state = second.state()
    assert state == {"step": 11}
    third = make(an_optimizer())
    third.load_state(state)
    assert lrs(third, 19) == straight[11:]  # exactly: the values are a function of the step count


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda o: OneCycleLR(o, max_lr=0, total_steps=10), "max_lr must be > 0"),
        (lambda o: OneCycleLR(o, max_lr=1e-3, total_steps=0), "total_steps must be a positive integer"),
        (lambda o: OneCycleLR(o, max_lr=1e-3, total_steps=10, pct_start=1.5), "pct_start must be in"),
        (lambda o: CosineAnnealing(o, total_steps=10, warmup_steps=10), "warmup_steps must be"),
        (lambda o: CosineAnnealing(o, total_steps=10, min_lr=1.0), "min_lr must be in"),
        (lambda o: StepLR(o, step_size=0), "step_size must be a positive integer"),
        (lambda o: StepLR(o, step_size=2, gamma=0), "gamma must be > 0"),
    ],
)
def test_bad_schedule_arguments_are_value_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make(an_optimizer())


# ------------------------------------------------------------------ AdamW


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2, 0.5])
def test_adamw_step_matches_update_rule(isa, weight_decay):
    param, m, v = rand(7, 9), np.zeros((7, 9), np.float32), np.zeros((7, 9), np.float32)
    p64, m64, v64 = param.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    for step in range(1, 8):
        grad = rand(7, 9)
        F.adamw_step(param, grad, m, v, step, lr=1e-2, weight_decay=weight_decay)
        p64, m64, v64 = ref.adamw_step(p64, grad.astype(np.float64), m64, v64, step, lr=1e-2, weight_decay=weight_decay)
    np.testing.assert_allclose(param, p64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m, m64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, v64, rtol=1e-5, atol=1e-7)


def test_adamw_decays_the_parameter_not_the_gradient():
    """With a zero gradient Adam's L2 term moves p through m and v; AdamW only shrinks p."""
    param, zeros = np.full(4, 2.0, np.float32), np.zeros(4, np.float32)
    m, v = zeros.copy(), zeros.copy()
    F.adamw_step(param, zeros, m, v, 1, lr=0.1, weight_decay=0.5)
    np.testing.assert_array_equal(param, np.float32(2.0 * (1 - 0.1 * 0.5)))
    assert not m.any() and not v.any()


def test_adamw_without_decay_is_adam_bit_for_bit():
    a, b = [Parameter(rand(5, 6)) for _ in range(2)]
    b.data[...] = a.data
    adam, adamw = Adam([a], lr=1e-2), AdamW([b], lr=1e-2, weight_decay=0.0)
    for _ in range(5):
        a.grad = rand(5, 6)
        b.grad = a.grad.copy()
        adam.step()
        adamw.step()
    assert a.data.tobytes() == b.data.tobytes()
    assert AdamW([a]).weight_decay == 1e-2  # PyTorch's default


def test_adamw_bad_arguments_name_them():
    p, g, m = rand(4), rand(4), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="step must be >= 1"):
        F.adamw_step(p, g, m, m.copy(), 0)
    with pytest.raises(ValueError, match="v must have the shape of param"):
        F.adamw_step(p, g, m, np.zeros(5, np.float32), 1)
    with pytest.raises(TypeError, match="grad must have dtype float32"):
        F.adamw_step(p, g.astype(np.float64), m, m.copy(), 1)


# ------------------------------------------------------------------ label smoothing


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_label_smoothing_matches_reference(isa, smoothing, label_dtype):
    logits = rand(9, 10, scale=3.0)
    labels = rng.integers(0, 10, 9).astype(label_dtype)
    loss, dlogits = F.softmax_cross_entropy(logits, labels, label_smoothing=smoothing)
    rloss, rd = ref.softmax_cross_entropy_smoothed(logits, labels, smoothing)
    assert loss == pytest.approx(rloss, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(dlogits, rd, rtol=1e-5, atol=1e-6)


def test_label_smoothing_finite_differences(isa):
    logits = rand(4, 5)
    labels = np.array([0, 4, 2, 2])
    _, dlogits = F.softmax_cross_entropy(logits, labels, 0.2)
    numeric = []
    for c in range(logits.size):
        z = logits.astype(np.float64)
        plus, minus = z.copy(), z.copy()
        plus.flat[c] += 1e-2
        minus.flat[c] -= 1e-2
        f = [F.softmax_cross_entropy(a.astype(np.float32), labels, 0.2)[0] for a in (plus, minus)]
        numeric.append((f[0] - f[1]) / 2e-2)
    np.testing.assert_allclose(dlogits.ravel(), numeric, rtol=1e-2, atol=1e-4)


def test_no_smoothing_is_the_plain_loss_bit_for_bit_and_bad_values_are_refused():
    logits, labels = rand(16, 10, scale=2.0), rng.integers(0, 10, 16)
    plain, smoothed = F.softmax_cross_entropy(logits, labels), F.softmax_cross_entropy(logits, labels, 0.0)
    assert plain[0] == smoothed[0] and plain[1].tobytes() == smoothed[1].tobytes()
    # smoothing raises the loss of a confident right answer, and its gradient no longer pushes it further
    confident = np.array([[10.0, 0.0, 0.0]], np.float32)
    assert (
        F.softmax_cross_entropy(confident, np.array([0]), 0.1)[0] > F.softmax_cross_entropy(confident, np.array([0]))[0]
    )
    assert F.softmax_cross_entropy(confident, np.array([0]), 0.1)[1][0, 0] > 0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            F.softmax_cross_entropy(logits, labels, bad)
