"""Long-form coding: the receptive field."""

import pytest
import torch

from transformers_stable_codec import StableCodecConfig, StableCodecModel

from .conftest import randomize_, tiny_config
from .test_modeling import speechlike


# --- receptive field ----------------------------------------------------------------------------------------------


def test_receptive_field_of_the_paper_scale_model():
    with torch.device("meta"):
        model = StableCodecModel(StableCodecConfig())
    # Encoder, per latent frame k: output conv +-1, 14 layers at 25 Hz (-63, +64 each), the k4 s2 conv, 14 layers
    # at 50 Hz, the k7 input conv: patches 2k - 2652 .. 2k + 2695. The decoder mirrors it.
    assert model.encoder_receptive_field == (1326, 1347)
    assert model.decoder_receptive_field == (1326, 1347)


def changed_frames(before: torch.Tensor, after: torch.Tensor, steps_per_frame: int) -> torch.Tensor:
    """Latent frames in which any value differs at all."""
    differs = (before != after).reshape(before.shape[0], -1, before.shape[-1]).any(dim=1)[0]
    return differs.view(-1, steps_per_frame).any(dim=-1).nonzero().flatten()


@pytest.mark.parametrize(
    "overrides",
    [dict(transformer_depths=[2, 2]), dict(strides=[2, 2]), dict(sliding_window=[0, 5]), dict(sliding_window=[7, 0])],
    ids=["depths-2-2", "strides-2-2", "window-0-5", "window-7-0"],
)
def test_receptive_field_is_exact(overrides):
    """Perturbing the input of latent frame k changes exactly the outputs k - right .. k + left: nothing outside,
    bit for bit, and every frame inside for some sample of the frame (the field is tight)."""
    torch.manual_seed(0)
    model = randomize_(StableCodecModel(tiny_config(**overrides))).eval()
    num_frames, frame, hop = 60, 30, model.hop_length

    left, right = model.encoder_receptive_field
    audio = speechlike(1, num_frames * hop / 16000)
    reached = []
    with torch.no_grad():
        before = model.encoder(audio)
        for offset in (0, hop // 2, hop - 1):
            perturbed = audio.clone()
            perturbed[..., frame * hop + offset] += 1.0
            reached.append(changed_frames(before, model.encoder(perturbed), 1))
    reached = torch.cat(reached)
    assert (int(reached.min()), int(reached.max())) == (frame - right, frame + left)

    left, right = model.decoder_receptive_field
    latents = torch.randn(1, model.config.latent_dim, num_frames, generator=torch.Generator().manual_seed(1))
    perturbed = latents.clone()
    perturbed[..., frame] += 1.0
    with torch.no_grad():
        reached = changed_frames(model.decoder(latents), model.decoder(perturbed), hop)
    assert (int(reached.min()), int(reached.max())) == (frame - right, frame + left)
