"""Folding eval-mode BatchNorm into convolutions: same outputs, same gradients, nothing left behind."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from transferlab.runtime.bnfold import find_pairs, folded_batchnorm


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _loss_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_folded_training_matches_plain_on_efficientnet_lite():
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3)
    _randomise_bn(model)
    model.eval()  # BN with stored statistics, as in a fine-tuning phase
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    plain_loss, plain_grads = _loss_and_grads(model, x, y)
    with folded_batchnorm(model, lambda: model(x[:2])):
        assert "forward" in model.conv_stem.__dict__  # the stem conv + bn1 pair is folded
        folded_loss, folded_grads = _loss_and_grads(model, x, y)
    # float32 rounding, relative: randomised statistics give a loss of ~18, and the order of the sums
    # (the thread count) moves its last digits
    assert folded_loss == pytest.approx(plain_loss, rel=1e-5)
    for name, g in plain_grads.items():  # the same gradients, up to float rounding
        assert (g - folded_grads[name]).abs().max() <= 1e-4 * g.abs().max(), name
    # Nothing stays behind: no patched forwards, same parameters and statistics.
    assert not any("forward" in m.__dict__ for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k]), k


def test_bn_in_training_mode_is_not_folded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(4, 3, 16, 16)
    with folded_batchnorm(model, lambda: model(x[:2])):
        model.train()
        out = model(x)
    model.train()
    model[1].reset_running_stats()
    ref = model(x)
    assert torch.allclose(out, ref, atol=1e-6)  # batch statistics were used, not the stored ones


class _SharedOutput(nn.Module):
    """The convolution's output feeds the BN *and* a skip connection: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        h = self.conv(x)
        return self.bn(h) + h


def test_unsafe_pairs_are_left_alone():
    model = _SharedOutput()
    _randomise_bn(model)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    assert find_pairs(model, lambda: model(x)) == [(model.conv, model.bn)]  # looks foldable...
    ref = model(x)
    with folded_batchnorm(model, lambda: model(x)):
        assert "forward" not in model.conv.__dict__  # ...but the output check refused it
        assert torch.allclose(model(x), ref)
