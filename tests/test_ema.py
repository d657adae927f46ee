"""The weight average that SFT samples and ships: its decay schedule, swap in/out, resume."""

from __future__ import annotations

import pytest
import torch

from viva_pipelines.storage import Storage
from viva_pipelines.train.checkpoint import load_latest_checkpoint, save_checkpoint
from viva_pipelines.train.ema import WeightEma, ema_decay_at


def test_decay_warms_up_then_stays_at_the_configured_value() -> None:
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 8) == pytest.approx(0.5)
    assert ema_decay_at(0.9, 1000) == 0.9
    with pytest.raises(ValueError, match="decay"):
        WeightEma(torch.nn.Linear(1, 1), 1.0)


def test_average_by_hand_and_applied_swaps_back() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEma(model, decay=0.5)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update()
    # decays 0.1, 2/11, 0.25 (warm-up below 0.5): 0 -> 0.9 -> 1.8545... -> 2.6409...
    expected = 0.0
    for n, value in enumerate((1.0, 2.0, 3.0)):
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
    with ema.applied():
        assert model.weight.item() == pytest.approx(expected)
    assert model.weight.item() == 3.0


def test_checkpoint_keeps_the_average_and_resumes_it(tmp_path) -> None:
    storage = Storage(str(tmp_path))

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        return model, optimizer, scheduler, WeightEma(model, 0.9)

    model, optimizer, scheduler, ema = fresh()
    for _ in range(5):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update()
    save_checkpoint(storage, "run", 5, model, optimizer, scheduler, is_main=True, ema=ema)

    again, optimizer2, scheduler2, ema2 = fresh()
    state = load_latest_checkpoint(storage, "run", again, optimizer2, scheduler2, ema=ema2)
    assert state["step"] == 5 and ema2.updates == 5
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)  # the model's own weights, not the average
    for a, b in zip(ema.shadow, ema2.shadow, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ema2.shadow[0], again.weight.float())
