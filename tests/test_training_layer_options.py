"""The trainers' kernel knobs (issue 7: chunk_size on the trainers' configs) reach the layer's backend."""
import pytest
import torch

from urlstm_triton.lm.config import ModelConfig as LMModelConfig
from urlstm_triton.lm.model import build_model
from urlstm_triton.tasks.config import ModelConfig as TaskModelConfig
from urlstm_triton.tasks.models import make_recurrent
from urlstm_triton.training.config import ConfigError
from urlstm_triton.training.layer_options import layer_backend_options, parse_chunk_size


def test_parse_chunk_size():
    assert parse_chunk_size("none") is None and parse_chunk_size(None) is None and parse_chunk_size("0") is None
    assert parse_chunk_size("auto") == "auto" and parse_chunk_size("64") == 64 and parse_chunk_size(8) == 8
    for bad in ("-3", "x", "1.5"):
        with pytest.raises(ConfigError, match="model.chunk_size"):
            parse_chunk_size(bad)


def test_options_only_what_differs_and_reference_refuses_them():
    assert layer_backend_options("auto", "none", "auto") == {}
    assert layer_backend_options("triton", "32", "step") == {"chunk_size": 32, "kernel": "step"}
    with pytest.raises(ConfigError, match="model.backend=reference runs no kernels.*model.chunk_size"):
        layer_backend_options("reference", "16", "auto")
    with pytest.raises(ConfigError, match="model.kernel"):
        layer_backend_options("triton", "none", "fast")


def test_config_validation_names_the_field():
    cfg = TaskModelConfig(backend="reference", chunk_size="8")
    with pytest.raises(ConfigError, match="model.chunk_size"):
        cfg.validate(None)
    lm = LMModelConfig(chunk_size="soon")
    with pytest.raises(ConfigError, match="model.chunk_size"):
        lm.validate(None)


def test_lm_and_task_models_pass_chunks_to_the_triton_backend():
    lm = build_model(LMModelConfig(embed=16, hidden=16, backend="triton", chunk_size="3"), vocab_size=20, bptt=8)
    assert lm.rnn.backend_options == {"chunk_size": 3}
    rnn = make_recurrent("UR", 2, 16, backend="triton", chunk_size=3)
    assert rnn.backend_options == {"chunk_size": 3}
    # in Triton's interpreter (tests run without a GPU) the chunked kernels really run and match the reference
    x = torch.randn(2, 7, 2)
    out, _ = rnn(x)
    ref = make_recurrent("UR", 2, 16, backend="reference")
    ref.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(out, ref(x)[0], rtol=1e-4, atol=1e-5)
