"""The fused kernel and the per-timestep cell loop compute the same function."""

from __future__ import annotations

import pytest
import torch

from rnnsweep.trial import flops
from rnnsweep.trial.models import RecurrentNet, forward_flops_per_sequence

CELLS = ("lstm", "gru", "rnn")
WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
IN, HID, BATCH, STEPS = 5, 7, 3, 6


def pair(cell: str, layers: int, seed: int = 0, scale: float = 1.0):
    """A fused model and a loop model built the way trials build them: same seed."""
    models = []
    for impl in ("fused", "loop"):
        torch.manual_seed(seed)
        model = RecurrentNet(cell, IN, HID, layers, impl, output_size=2,
                             recurrent_init_scale=scale)
        models.append(model.double())  # float64: differences are the algorithms', not fp32's
    return models


def initial_state(cell: str, layers: int, gen: torch.Generator):
    def tensor():
        return torch.randn(layers, BATCH, HID, generator=gen, dtype=torch.float64,
                           requires_grad=True)
    return (tensor(), tensor()) if cell == "lstm" else tensor()


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_same_weights_after_construction(cell, layers):
    fused, loop = pair(cell, layers, scale=3.0)
    assert len(loop.cells) == layers
    for k in range(layers):
        for name in WEIGHTS:
            torch.testing.assert_close(getattr(loop.cells[k], name),
                                       getattr(fused.rnn, f"{name}_l{k}"), rtol=0, atol=0)
    torch.testing.assert_close(loop.head.weight, fused.head.weight, rtol=0, atol=0)
    torch.testing.assert_close(loop.head.bias, fused.head.bias, rtol=0, atol=0)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_fused_and_loop_same_outputs_and_gradients(cell, layers, with_state):
    fused, loop = pair(cell, layers)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, STEPS, IN, generator=gen, dtype=torch.float64)
    # A loss that depends on every output: the head, the hidden sequence and the state.
    w_y = torch.randn(BATCH, STEPS, 2, generator=gen, dtype=torch.float64)
    w_h = torch.randn(BATCH, STEPS, HID, generator=gen, dtype=torch.float64)
    w_s = torch.randn(layers, BATCH, HID, generator=gen, dtype=torch.float64)
    state0 = initial_state(cell, layers, gen) if with_state else None

    results = []
    for model in (fused, loop):
        xi = x.clone().requires_grad_(True)
        s0 = None
        if state0 is not None:
            s0 = tuple(s.detach().clone().requires_grad_(True) for s in as_tuple(state0))
            s0 = s0 if cell == "lstm" else s0[0]
        y, hidden, state = model(xi, s0)
        loss = (y * w_y).sum() + (hidden * w_h).sum() \
            + sum((s * w_s).sum() for s in as_tuple(state))
        loss.backward()
        results.append((xi, s0, y, hidden, state))

    (xf, sf, yf, hf, statef), (xl, sl, yl, hl, statel) = results
    tol = {"rtol": 1e-9, "atol": 1e-10}
    torch.testing.assert_close(yl, yf, **tol)
    torch.testing.assert_close(hl, hf, **tol)
    for a, b in zip(as_tuple(statel), as_tuple(statef), strict=True):
        torch.testing.assert_close(a, b, **tol)

    # Gradients: input, initial state, every recurrent weight, the head.
    assert xf.grad is not None and xf.grad.abs().sum() > 0
    torch.testing.assert_close(xl.grad, xf.grad, **tol)
    if with_state:
        for a, b in zip(as_tuple(sl), as_tuple(sf), strict=True):
            assert b.grad is not None and b.grad.abs().sum() > 0
            torch.testing.assert_close(a.grad, b.grad, **tol)
    for k in range(layers):
        for name in WEIGHTS:
            g_fused = getattr(fused.rnn, f"{name}_l{k}").grad
            g_loop = getattr(loop.cells[k], name).grad
            assert g_fused is not None and g_fused.abs().sum() > 0, f"{name}_l{k}"
            torch.testing.assert_close(g_loop, g_fused, **tol, msg=f"{cell} {name}_l{k}")
    torch.testing.assert_close(loop.head.weight.grad, fused.head.weight.grad, **tol)
    torch.testing.assert_close(loop.head.bias.grad, fused.head.bias.grad, **tol)


@pytest.mark.parametrize("impl", ["fused", "loop"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_state_in_library_layout_and_carried_across_chunks(cell, layers, impl):
    torch.manual_seed(0)
    model = RecurrentNet(cell, IN, HID, layers, impl).double().eval()
    x = torch.randn(BATCH, STEPS, IN, dtype=torch.float64)
    with torch.no_grad():
        y_full, h_full, state_full = model(x)
        y_a, _, state_a = model(x[:, :2])
        y_b, _, state_b = model(x[:, 2:], state_a)

    assert y_full.shape == (BATCH, STEPS, 1)
    assert h_full.shape == (BATCH, STEPS, HID)
    if cell == "lstm":
        assert isinstance(state_full, tuple) and len(state_full) == 2
    else:
        assert isinstance(state_full, torch.Tensor)
    for s in as_tuple(state_full):
        assert s.shape == (layers, BATCH, HID)
    # h_n of the last layer is the last timestep of the hidden sequence.
    torch.testing.assert_close(as_tuple(state_full)[0][-1], h_full[:, -1], rtol=0, atol=0)
    # Streaming in two chunks with the state carried equals one full pass.
    torch.testing.assert_close(torch.cat([y_a, y_b], dim=1), y_full, rtol=1e-9, atol=1e-10)
    for a, b in zip(as_tuple(state_b), as_tuple(state_full), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_loop_state_accepted_by_fused_and_back(cell):
    """Both implementations use the same state layout, so state can move between them."""
    fused, loop = pair(cell, 2)
    x = torch.randn(BATCH, STEPS, IN, dtype=torch.float64)
    with torch.no_grad():
        _, _, s_loop = loop(x[:, :3])
        y_f, _, _ = fused(x[:, 3:], s_loop)
        _, _, s_fused = fused(x[:, :3])
        y_l, _, _ = loop(x[:, 3:], s_fused)
    torch.testing.assert_close(y_l, y_f, rtol=1e-9, atol=1e-10)


def test_recurrent_init_scale_multiplies_only_recurrent_weights():
    torch.manual_seed(0)
    base = RecurrentNet("rnn", IN, HID, 2)
    torch.manual_seed(0)
    scaled = RecurrentNet("rnn", IN, HID, 2, recurrent_init_scale=3.0)
    for k in range(2):
        torch.testing.assert_close(getattr(scaled.rnn, f"weight_hh_l{k}"),
                                   3.0 * getattr(base.rnn, f"weight_hh_l{k}"))
        torch.testing.assert_close(getattr(scaled.rnn, f"weight_ih_l{k}"),
                                   getattr(base.rnn, f"weight_ih_l{k}"))


# docs/experiments.md "Reference arithmetic": per layer, per timestep, per sequence.
def reference_flops(cell: str, i: int, h: int, layers: int, t: int) -> int:
    per_step = {"rnn": lambda i_: 2 * h * (i_ + h),
                "gru": lambda i_: 6 * h * (i_ + h),
                "lstm": lambda i_: 8 * h * (i_ + h)}[cell]
    return t * (per_step(i) + (layers - 1) * per_step(h))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("i,h,layers,t", [(128, 256, 1, 100), (256, 512, 2, 200),
                                          (64, 128, 1, 50), (3, 5, 3, 7)])
def test_forward_flops_match_reference_arithmetic(cell, i, h, layers, t):
    assert forward_flops_per_sequence(cell, i, h, layers, t) == reference_flops(cell, i, h,
                                                                                layers, t)


def test_forward_flops_worked_values():
    # Experiment 1: LSTM 128 -> 256, seq 100: 8 * 256 * 384 * 100.
    assert forward_flops_per_sequence("lstm", 128, 256, 1, 100) == 78_643_200
    # Experiment 4: tanh RNN 64 -> 128, seq 50: 2 * 128 * 192 * 50.
    assert forward_flops_per_sequence("rnn", 64, 128, 1, 50) == 2_457_600
    # Experiment 3: two-layer LSTM 256 -> 512, seq 100: 8*512*(768 + 1024)*100.
    assert forward_flops_per_sequence("lstm", 256, 512, 2, 100) == 734_003_200
    # GRU is three gates: 3/4 of an LSTM of the same shape.
    assert forward_flops_per_sequence("gru", 128, 256, 1, 100) * 4 == \
        forward_flops_per_sequence("lstm", 128, 256, 1, 100) * 3


@pytest.mark.gpu
@pytest.mark.parametrize("cell", CELLS)
def test_fused_and_loop_agree_on_cuda(cell):
    """cuDNN's fused kernel against the cell loop on the GPU (fp32 tolerances)."""
    fused, loop = (m.float().cuda() for m in pair(cell, 2))
    x = torch.randn(BATCH, STEPS, IN, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(loop(x)[0], fused(x)[0], rtol=1e-4, atol=1e-5)


# --- FLOPs of any model: FlopCounterMode where it sees the ops, the formula otherwise -------


def counter_total(model: torch.nn.Module, x: torch.Tensor) -> int:
    """What ``FlopCounterMode`` alone counts, no formula added."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("impl", ["fused", "loop"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_counted_flops_of_builtins_equal_the_formula(cell, layers, impl):
    """The built-ins' whole forward (recurrent layers by docs/experiments.md, plus the head)."""
    model = RecurrentNet(cell, IN, HID, layers, impl, output_size=2)
    count = flops.forward_flops(model, IN, STEPS, torch.device("cpu"))
    head = 2 * HID * 2 * STEPS
    assert count.per_sequence == reference_flops(cell, IN, HID, layers, STEPS) + head
    x = torch.zeros(1, STEPS, IN)
    if counter_total(model, x) == count.per_sequence:
        assert count.source == flops.COUNTER  # the counter saw everything: no formula used
    else:  # a fused kernel the counter cannot see into (oneDNN's LSTM on CPU)
        assert impl == "fused" and count.source == flops.MIXED


@pytest.mark.parametrize("cell", CELLS)
def test_counter_and_formula_agree_where_both_apply(cell):
    """The cell loop is plain matrix products: the counter's figure without any formula
    equals the formula's, layer by layer, at any batch."""
    loop = RecurrentNet(cell, IN, HID, 2, "loop", output_size=1)
    fused = RecurrentNet(cell, IN, HID, 2, "fused", output_size=1)
    x = torch.zeros(BATCH, STEPS, IN)
    recurrent = counter_total(loop, x) - 2 * HID * BATCH * STEPS  # less the head
    assert recurrent == flops.rnn_layer_flops(fused.rnn, x)
    assert recurrent == BATCH * forward_flops_per_sequence(cell, IN, HID, 2, STEPS)


def test_formula_covers_bidirectional_and_projected_layers():
    lstm = torch.nn.LSTM(IN, HID, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.zeros(1, STEPS, IN)
    per_step = 2 * (8 * HID * (IN + HID)) + 2 * (8 * HID * (2 * HID + HID))
    assert flops.rnn_layer_flops(lstm, x) == per_step * STEPS


def test_fused_lstm_on_cpu_is_tagged_when_the_counter_misses_it():
    """A model whose fused kernel the counter cannot see gets the formula, tagged."""
    model = torch.nn.LSTM(IN, HID, batch_first=True)
    count = flops.forward_flops(model, IN, STEPS, torch.device("cpu"))
    assert count.per_sequence == forward_flops_per_sequence("lstm", IN, HID, 1, STEPS)
    seen = counter_total(model, torch.zeros(1, STEPS, IN))
    assert count.source == (flops.COUNTER if seen else flops.FORMULA)
