"""The shared training loop: it learns, and a resumed run continues exactly where it stopped."""

import pytest
import torch

from retouch.train.loop import LoopConfig, latest_checkpoint, step_generator, train


class Interrupted(Exception):
    pass


def _problem(stop_at=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
    target = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def make_batch(step, rank, world):
        if stop_at is not None and step == stop_at:
            raise Interrupted
        x = torch.randn(8, 4, generator=step_generator(123, step, rank))
        return x, x @ target

    def loss_fn(model, batch, generator):
        x, y = batch
        noise = 0.01 * torch.randn(y.shape, generator=generator)  # randomness inside the loss, too
        return torch.nn.functional.mse_loss(model(x), y + noise), {}

    return model, make_batch, loss_fn


def _config(tmp_path, max_steps=30, **kw):
    return LoopConfig(output_dir=str(tmp_path), max_steps=max_steps, learning_rate=3e-2, warmup_steps=3,
                      checkpoint_every=10, log_every=5, ema_decay=0.9, **kw)


def test_loss_decreases(tmp_path):
    model, make_batch, loss_fn = _problem()
    result = train(model, loss_fn, make_batch, _config(tmp_path, max_steps=200), batch_size=8, progress=False)
    assert result.losses[-1][1] < 0.1 * result.losses[0][1]
    assert latest_checkpoint(tmp_path).name == "step-200"


def test_interrupted_run_resumes_with_the_same_trajectory(tmp_path):
    model, make_batch, loss_fn = _problem()
    straight = train(model, loss_fn, make_batch, _config(tmp_path / "a"), batch_size=8, progress=False)

    model, make_batch, loss_fn = _problem(stop_at=17)
    with pytest.raises(Interrupted):
        train(model, loss_fn, make_batch, _config(tmp_path / "b"), batch_size=8, progress=False)
    assert latest_checkpoint(tmp_path / "b").name == "step-10"
    model, make_batch, loss_fn = _problem()  # a fresh process: new model object, same init
    resumed = train(model, loss_fn, make_batch, _config(tmp_path / "b"), batch_size=8, progress=False)
    assert [s for s, _ in resumed.losses] == [s for s, _ in straight.losses]
    for (_, a), (_, b) in zip(resumed.losses, straight.losses):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
