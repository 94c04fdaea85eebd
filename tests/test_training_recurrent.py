"""The trainers' one recurrent config and builder (issue 13): the model section's variant names mean the same in
every job, and its backend fields become the layer's LayerOptions (issue 7's chunk_size knob on the configs)."""
import pytest
import torch
from torch import nn

from urlstm_triton import URLSTM
from urlstm_triton.lm.config import ModelConfig as LMModelConfig
from urlstm_triton.lm.model import build_model
from urlstm_triton.options import LayerOptions
from urlstm_triton.tasks.config import ModelConfig as TaskModelConfig
from urlstm_triton.training import ConfigError, RecurrentConfig, build_recurrent


def test_the_lm_and_the_tasks_share_one_model_section():
    assert TaskModelConfig is RecurrentConfig and issubclass(LMModelConfig, RecurrentConfig)


@pytest.mark.parametrize("variant, cls, gate", [("lstm", nn.LSTM, None), ("classic", URLSTM, "lstm"),
                                                ("UR", URLSTM, "UR"), ("U-LSTM", URLSTM, "U-")])
def test_variant_names_mean_the_same_in_the_lm_and_the_task_models(variant, cls, gate):
    lm = build_model(LMModelConfig(variant=variant, embed=8, hidden=8), vocab_size=20, bptt=8)
    task = build_recurrent(RecurrentConfig(variant=variant, hidden=8), 3, batch_first=True)
    for rnn in (lm.rnn, task):
        assert type(rnn) is cls
        if gate:
            assert rnn.gate == gate
    assert task.batch_first and not lm.rnn.batch_first


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="model.backend='reference' takes no backend options"):
        RecurrentConfig(backend="reference", chunk_size=8).validate(None)
    with pytest.raises(ConfigError, match="model.kernel must be one of"):
        LMModelConfig(variant="lstm", kernel="fast").validate(None)
    with pytest.raises(ConfigError, match="model.chrono_tmax must be greater than 2"):
        RecurrentConfig(chrono_tmax=2.0).validate(None)


def test_lm_and_task_models_pass_chunks_to_the_triton_backend():
    lm = build_model(LMModelConfig(embed=16, hidden=16, backend="triton", chunk_size=3), vocab_size=20, bptt=8)
    assert lm.rnn.options == LayerOptions(backend="triton", chunk_size=3)
    rnn = build_recurrent(RecurrentConfig(hidden=16, backend="triton", chunk_size=3), 2, batch_first=True)
    assert rnn.options.kernel_options() == {"chunk_size": 3}
    # in Triton's interpreter (tests run without a GPU) the chunked kernels really run and match the reference
    x = torch.randn(2, 7, 2)
    out, _ = rnn(x)
    ref = build_recurrent(RecurrentConfig(hidden=16, backend="reference"), 2, batch_first=True)
    ref.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(out, ref(x)[0], rtol=1e-4, atol=1e-5)


def test_chrono_variants_take_the_jobs_dependency_length_unless_configured():
    torch.manual_seed(0)
    default = build_recurrent(RecurrentConfig(variant="C-", hidden=64), 1, batch_first=True, default_tmax=5.0)
    assert default.chrono_tmax == 5.0
    # chrono: b_f = log U[1, T_max - 1], so every bias stays below log(T_max - 1)
    assert default.bias_l0[:64].max() <= torch.log(torch.tensor(4.0)) + 1e-6
    own = build_recurrent(RecurrentConfig(variant="C-", hidden=4, chrono_tmax=900.0), 1, batch_first=True,
                          default_tmax=5.0)
    assert own.chrono_tmax == 900.0
