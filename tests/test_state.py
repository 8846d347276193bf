"""The model API a PyTorch user expects: cnnfast.manual_seed, state_dict / load_state_dict, zero_grad."""

import numpy as np
import pytest

import cnnfast
from cnnfast import nn


def small_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 3))


def test_manual_seed_makes_models_built_without_rng_the_same():
    cnnfast.manual_seed(5)
    a = small_model()
    cnnfast.manual_seed(5)
    b = small_model()
    c = small_model()  # the generator moved on: another model
    for (name, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data, err_msg=name)
        assert not np.array_equal(pa.data, pc.data), name

    def seeded_run():  # seed, build, train-mode forward: the same weights and dropout masks each time
        cnnfast.manual_seed(11)
        return small_model().forward(np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32))

    np.testing.assert_array_equal(seeded_run(), seeded_run())


def test_state_dict_round_trip_into_another_model():
    a, b = small_model(), small_model()
    state = a.state_dict()
    assert list(state) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    state["0.weight"][...] = 7.0  # a copy: the model is untouched
    assert not (a.layers[0].weight.data == 7.0).any()
    before = b.layers[0].weight.data
    b.load_state_dict(a.state_dict())
    assert b.layers[0].weight.data is before  # loaded into the model's own arrays
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(a.infer(x), b.infer(x))
    b.load_state_dict({k: v.astype(np.float64) for k, v in a.state_dict().items()})  # float64 is cast
    np.testing.assert_array_equal(a.infer(x), b.infer(x))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("4.bias"), r"missing \['4.bias'\]"),
        (lambda s: s.update({"9.weight": np.zeros(1)}), r"unexpected \['9.weight'\]"),
        (lambda s: s.update({"0.bias": np.zeros(5)}), r"0.bias has shape \(5,\), the model's is \(4,\)"),
        (lambda s: s.update({"0.bias": np.array(["a"] * 4)}), "0.bias is not numeric"),
    ],
)
def test_load_state_dict_names_what_differs_and_changes_nothing(change, message):
    model = small_model()
    before = model.state_dict()
    state = small_model().state_dict()
    change(state)
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_zero_grad_clears_every_gradient():
    model = small_model()
    x = np.random.default_rng(2).random((2, 1, 8, 8), dtype=np.float32)
    model.backward(np.ones_like(model.forward(x)))
    assert any(p.grad.any() for p in model.parameters())
    model.zero_grad()
    assert not any(p.grad.any() for p in model.parameters())
