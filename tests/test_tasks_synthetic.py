"""The copy and adding generators produce exactly the specified sequences, reproducibly from a seed."""
import pytest
import torch

from urlstm_triton.tasks.synthetic import (
    ADDING_CHANCE_MSE, BLANK, CUE, AddingTask, CopyTask, adding_batch, batch_generator, copy_batch,
    copy_output_slice, make_synthetic_task,
)


def test_copy_batch_layout():
    lag = 7
    x, y = copy_batch(5, lag, torch.Generator().manual_seed(3))
    assert x.shape == (5, lag + 20) and x.dtype == torch.long
    assert y.shape == (5, 10) and y.dtype == torch.long
    assert torch.equal(x[:, :10], y)  # the ten symbols come first
    assert ((y >= 1) & (y <= 8)).all()  # from the alphabet of 8 (tokens 1..8)
    assert (x[:, 10:10 + lag] == BLANK).all()  # then lag blanks
    assert (x[:, 10 + lag:] == CUE).all()  # then ten cue markers
    out = copy_output_slice(lag)
    assert (out.start, out.stop) == (10 + lag, 20 + lag)
    assert (x[:, out] == CUE).all()  # the outputs are read exactly at the cue steps


def test_copy_symbols_cover_the_alphabet():
    _, y = copy_batch(200, 0, torch.Generator().manual_seed(0))
    assert set(y.unique().tolist()) == set(range(1, 9))


def test_adding_batch_layout_and_target():
    T = 11
    x, y = adding_batch(64, T, torch.Generator().manual_seed(1))
    assert x.shape == (64, T, 2) and y.shape == (64,)
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert (markers.sum(1) == 2).all() and set(markers.unique().tolist()) == {0.0, 1.0}
    half = T // 2
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    assert torch.allclose((values * markers).sum(1), y)


def test_adding_chance_baseline_is_the_mse_of_predicting_one():
    _, y = adding_batch(20000, 10, torch.Generator().manual_seed(2))
    assert abs(((y - 1.0) ** 2).mean().item() - ADDING_CHANCE_MSE) < 0.01


def test_batches_are_a_function_of_seed_stream_and_step():
    a = CopyTask(lag=5, batch_size=4, seed=11)
    b = CopyTask(lag=5, batch_size=4, seed=11)
    assert torch.equal(a.train_batch(7)[0], b.train_batch(7)[0])
    assert not torch.equal(a.train_batch(7)[0], a.train_batch(8)[0])
    assert not torch.equal(a.train_batch(7)[0], CopyTask(lag=5, batch_size=4, seed=12).train_batch(7)[0])
    ev1, ev2 = a.eval_batches(), b.eval_batches()
    assert all(torch.equal(p[0], q[0]) for p, q in zip(ev1, ev2))
    # the evaluation stream is not the training stream
    assert not torch.equal(ev1[0][0], a.train_batch(0)[0])
    ad = AddingTask(length=9, batch_size=3, seed=5)
    assert torch.equal(ad.train_batch(2)[1], AddingTask(length=9, batch_size=3, seed=5).train_batch(2)[1])
    g1, g2 = batch_generator(0, 0, 1), batch_generator(0, 0, 1)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_bad_task_and_sizes():
    with pytest.raises(ValueError, match="unknown synthetic task 'copyy'"):
        make_synthetic_task("copyy")
    with pytest.raises(ValueError, match="lag"):
        copy_batch(2, -1, torch.Generator())
    with pytest.raises(ValueError, match="length"):
        adding_batch(2, 1, torch.Generator())
    with pytest.raises(ValueError, match="batch_size"):
        CopyTask(lag=3, batch_size=0)
