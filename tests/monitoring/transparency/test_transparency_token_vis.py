"""Token saliency (known answer, hooks removed) and feature visualisation (objective rises, hooks removed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlsafety.core import InputError, generator
from mlsafety.monitoring import transparency as tr


class BagOfWords(nn.Module):
    """Mean of token embeddings, then a linear head: d logit_c / d e_t = W_c / L."""

    def __init__(self, vocab: int = 20, dim: int = 6, k: int = 3) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.emb = nn.Embedding(vocab, dim)
            self.head = nn.Linear(dim, k)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens).mean(dim=1))


def test_token_saliency_known_answer_and_hooks_removed() -> None:
    model = BagOfWords().eval()
    tokens = torch.randint(0, 20, (2, 5), generator=generator(0, "tok"))
    sal = tr.token_saliency(model, tokens, 1)
    expected = model.head.weight[1].detach().norm() / 5
    assert sal.shape == (2, 5) and torch.allclose(sal, expected.expand(2, 5))
    gxi = tr.token_saliency(model, tokens, torch.tensor([0, 2]), reduce="grad-x-input")
    emb = model.emb(tokens).detach()
    w = model.head.weight.detach()[torch.tensor([0, 2])]
    assert torch.allclose(gxi, (emb * w[:, None, :]).sum(-1) / 5, atol=1e-6)
    assert not model.emb._forward_hooks
    assert all(p.requires_grad for p in model.parameters())


def test_token_saliency_removes_its_hook_on_error() -> None:
    class Broken(BagOfWords):
        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            self.emb(tokens)
            raise RuntimeError("boom")

    model = Broken()
    with pytest.raises(RuntimeError):
        tr.token_saliency(model, torch.zeros(1, 3, dtype=torch.long), 0)
    assert not model.emb._forward_hooks
    with pytest.raises(InputError):
        tr.token_saliency(model, torch.zeros(1, 3), 0)
    with pytest.raises(InputError):
        tr.token_saliency(nn.Sequential(nn.Linear(3, 2)), torch.zeros(1, 3, dtype=torch.long), 0)


def test_class_visualisation_raises_the_class_logit(tiny_net: nn.Module) -> None:
    tiny_net.train()
    start = tr.ImageParam((1, 8, 8), generator=generator(0, "feature-vis", "[2]"))()
    imgs = tr.visualize(tiny_net, [2, 0], (1, 8, 8), steps=30, lr=0.1)
    assert imgs.shape == (2, 1, 8, 8) and imgs.min() >= 0 and imgs.max() <= 1
    tiny_net.eval()
    with torch.no_grad():
        logits, before = tiny_net(imgs), tiny_net(start)[0]
    # Each image raises its own class's logit, above the start and above the other image's.
    assert logits[0, 2] > before[2] + 0.1 and logits[1, 0] > before[0] + 0.1
    assert logits[0, 2] > logits[1, 2] and logits[1, 0] > logits[0, 0]


def test_channel_visualisation_removes_hooks_also_on_error(tiny_net: nn.Module) -> None:
    flags = [p.requires_grad for p in tiny_net.parameters()]
    img = tr.visualize(tiny_net, tr.ChannelObjective("conv", 1), (1, 8, 8), steps=5, fft=False)
    assert img.shape == (1, 1, 8, 8)
    with pytest.raises(InputError):
        tr.visualize(tiny_net, tr.ChannelObjective("conv", 99), (1, 8, 8), steps=2)
    assert not tiny_net.conv._forward_hooks and not tiny_net.training
    assert [p.requires_grad for p in tiny_net.parameters()] == flags
    with pytest.raises(InputError):
        tr.visualize(tiny_net, 7, (1, 8, 8), steps=1)


def test_colour_images_use_the_decorrelated_parameterisation() -> None:
    param = tr.ImageParam((3, 6, 6), generator=generator(0, "c"), batch=2)
    assert param.decorrelate and param().shape == (2, 3, 6, 6)
    x = torch.rand(2, 3, 6, 6, generator=generator(0, "t"))
    out = tr.random_transform(x, generator(0, "tt"), jitter=0, scale=0.0, degrees=0.0)
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 6, 10)])
def test_fourier_image_is_lucids_parameterisation(shape: tuple[int, int, int]) -> None:
    """Lucid's fft_image: spectrum * sqrt(h w) / max(f, 1 / max(h, w)) through TensorFlow's irfft2d (which
    divides by h w), then / 4: a unitary map of the 1/f-scaled spectrum, so a pixel's scale does not grow
    with the image size."""
    param = tr.ImageParam(shape, decorrelate=False, generator=generator(0, "fft"))
    with torch.no_grad():
        param.spectrum.normal_(0, 0.05, generator=generator(0, "spectrum"))
    _, h, w = shape
    freqs = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2).sqrt()
    scale = (h * w) ** 0.5 / freqs.clamp_min(1 / max(h, w))
    spec = torch.complex(param.spectrum[0], param.spectrum[1]) * scale
    want = torch.fft.irfft2(spec, s=(h, w), norm="backward") / 4
    with torch.no_grad():
        got = torch.logit(param().double()).float()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
