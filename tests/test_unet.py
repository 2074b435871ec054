import pytest
import torch

from superdiffusion.nn import UNet


@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 30, 22)), (3, (1, 1, 12, 10, 9))])
def test_output_has_input_size_even_when_not_a_multiple(dims, shape):
    net = UNet(shape[1], 2, dims, features=(4, 8, 16))
    assert net(torch.randn(shape)).shape == (shape[0], 2, *shape[2:])


def test_time_embedding_changes_the_output_and_is_required():
    torch.manual_seed(0)
    net = UNet(3, 2, features=(4, 8), time_embedding=True).eval()
    x = torch.randn(1, 3, 16, 16)
    a = net(x, torch.tensor([0]))
    b = net(x, torch.tensor([900]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="pass t"):
        net(x)


def test_optional_heads():
    net = UNet(1, 3, features=(4, 8, 16, 32), aux_decoders=3, deep_supervision=True, sdf_head=True)
    out = net.forward_all(torch.randn(2, 1, 16, 16))
    assert len(out.aux) == 3 and len(out.deep) == 3  # one head per decoder scale (4 levels: 3 scales)
    assert all(d.shape == (2, 3, 16, 16) for d in out.deep)
    assert out.sdf.shape == (2, 2, 16, 16) and out.sdf.abs().max() <= 1


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    recomputed = UNet(1, 2, 3, (4, 8, 16), checkpointing=True)
    torch.manual_seed(0)
    stored = UNet(1, 2, 3, (4, 8, 16))
    x = torch.randn(2, 1, 16, 16, 16)
    recomputed(x).sum().backward()
    stored(x).sum().backward()
    for a, b in zip(recomputed.parameters(), stored.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
