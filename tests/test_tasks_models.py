"""Every variant builds, runs forward and backward in every task model; lstm is torch.nn.LSTM, classic the URLSTM's
classic-LSTM mode."""
import pytest
import torch
from torch import nn

from urlstm_triton import URLSTM
from urlstm_triton.tasks.models import AddingModel, CopyModel, SequenceClassifier
from urlstm_triton.tasks.synthetic import AddingTask, CopyTask
from urlstm_triton.training.recurrent import VARIANTS, RecurrentConfig, build_recurrent, check_variant


def make_recurrent(variant, input_size, hidden, **fields):
    return build_recurrent(RecurrentConfig(variant=variant, hidden=hidden, **fields), input_size, batch_first=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_in_every_task_model(variant):
    copy = CopyTask(lag=3, batch_size=2)
    adding = AddingTask(length=6, batch_size=2)
    models = [
        (CopyModel(make_recurrent(variant, 10, 8, chrono_tmax=23), 8, 10, copy.output_slice), copy.train_batch(1)),
        (AddingModel(make_recurrent(variant, 2, 8, chrono_tmax=6), 8), adding.train_batch(1)),
        (SequenceClassifier(make_recurrent(variant, 1, 8, chrono_tmax=5), 8, seq_len=5, mlp_hidden=4),
         (torch.rand(2, 5, 1), None)),
    ]
    shapes = [(2, 10, 10), (2,), (2, 10)]
    for (model, (x, _)), shape in zip(models, shapes):
        out = model(x)
        assert out.shape == shape and torch.isfinite(out).all()
        out.float().pow(2).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        expected = nn.LSTM if variant == "lstm" else URLSTM
        assert isinstance(model.rnn, expected)
        if variant != "lstm":
            assert model.rnn.gate == ("lstm" if variant == "classic" else variant)


def test_lstm_forget_bias_and_concat_readout():
    rnn = make_recurrent("lstm", 3, 4, forget_bias=2.5)
    total = rnn.bias_ih_l0 + rnn.bias_hh_l0
    assert torch.allclose(total[4:8], torch.full((4,), 2.5))
    model = SequenceClassifier(make_recurrent("UR", 1, 4), 4, seq_len=7, readout="concat", mlp_hidden=3)
    assert model.mlp[0].in_features == 28 and model(torch.rand(2, 7, 1)).shape == (2, 10)


def test_unknown_variant_and_readout():
    assert check_variant("UR-LSTM") == "UR" and check_variant("LSTM") == "lstm" and check_variant("-") == "--"
    assert check_variant("Classic") == "classic"
    with pytest.raises(ValueError, match="unknown variant 'XR'.*UR"):
        make_recurrent("XR", 1, 4)
    with pytest.raises(ValueError, match="readout"):
        SequenceClassifier(make_recurrent("UR", 1, 4), 4, seq_len=3, readout="mean")
    with pytest.raises(ValueError, match="chrono_tmax"):
        make_recurrent("C-", 1, 4)
