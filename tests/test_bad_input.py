"""Every bad input gets a clear error: the right exception type, and a message that names the argument."""
import pytest
import torch

from urlstm_triton import URLSTM, URLSTMCell, urlstm


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        ({"input_size": 0, "hidden_size": 4}, ValueError, "input_size"),
        ({"input_size": 3, "hidden_size": -1}, ValueError, "hidden_size"),
        ({"input_size": 3, "hidden_size": 4, "num_layers": 0}, ValueError, "num_layers"),
        ({"input_size": 3.5, "hidden_size": 4}, TypeError, "input_size"),
        ({"input_size": 3, "hidden_size": 4, "gate": "XR"}, ValueError, "gate"),
        ({"input_size": 3, "hidden_size": 4, "gate": 7}, TypeError, "gate"),
        ({"input_size": 3, "hidden_size": 4, "dropout": 1.5}, ValueError, "dropout"),
        ({"input_size": 3, "hidden_size": 4, "dropout": -0.1}, ValueError, "dropout"),
        ({"input_size": 3, "hidden_size": 4, "backend": "cuda"}, ValueError, "backend"),
        ({"input_size": 3, "hidden_size": 4, "gate": "C-"}, ValueError, "chrono_tmax"),
    ],
)
def test_constructor_errors(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        URLSTM(**kwargs)


def test_forward_errors():
    m = URLSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="input must be 3-D"):
        m(torch.randn(2, 3, 4, 3))
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(5, 2, 6))
    with pytest.raises(TypeError, match="input must be a floating-point"):
        m(torch.ones(5, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="state h_0 must have shape"):
        m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match="state c_0 must have shape"):
        m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)))
    with pytest.raises(TypeError, match="state h_0 has dtype torch.float64"):
        m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4, dtype=torch.float64), torch.zeros(2, 2, 4)))
    with pytest.raises(TypeError, match="state"):
        m(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))
    with pytest.raises(TypeError, match="input has dtype torch.float64"):
        m(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="same device.*state h_0 on meta"):
        m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4, device="meta"), torch.zeros(2, 2, 4)))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    with pytest.raises(ValueError, match="state h_0 must have shape"):
        m(packed, (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)))


def test_functional_weight_errors():
    x = torch.randn(4, 2, 3)
    good = (torch.randn(16, 3), torch.randn(16, 4), torch.randn(16))
    with pytest.raises(ValueError, match=r"weights\[0\]\[0\] \(w_ih\) must have shape \(12, 3\)"):
        urlstm(x, [good], gate="U-")
    with pytest.raises(ValueError, match="one .* per layer and direction"):
        urlstm(x, [good], bidirectional=True)
    with pytest.raises(ValueError, match="weights"):
        urlstm(x, [])
    with pytest.raises(ValueError, match=r"weights\[0\]\[2\] \(bias\)"):
        urlstm(x, [(good[0], good[1], torch.randn(15))])


def test_triton_backend_error_is_clear_without_kernels_or_gpu():
    # conftest turns Triton's interpreter on (then the kernels do run on CPU tensors), so the plain-CPU
    # case runs in a fresh interpreter without TRITON_INTERPRET.
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from urlstm_triton import URLSTM\n"
        "m = URLSTM(3, 4, backend='triton')\n"
        "try:\n"
        "    m(torch.randn(5, 2, 3))\n"
        "except RuntimeError as e:\n"
        "    print('RuntimeError:', e)\n"
        "else:\n"
        "    print('no error')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU tensor, and no GPU to fall back on
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("RuntimeError:"), res.stdout
    assert "triton" in res.stdout.lower() and "cpu" in res.stdout.lower(), res.stdout


def test_cell_errors():
    cell = URLSTMCell(3, 4)
    with pytest.raises(ValueError, match="input has 5 features"):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match="hx h_0 must have shape"):
        cell(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))
    with pytest.raises(TypeError, match="input must be a floating-point"):
        cell(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="gate"):
        URLSTMCell(3, 4, gate="Q")
