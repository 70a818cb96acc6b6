"""The finetune's objectives: multi-resolution STFT and mel distances, time-domain L1/L2, a multi-scale STFT
discriminator with hinge and feature-matching losses, and CTC on the projection head's logits.

Spectral losses are computed in float32 whatever the autocast precision.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..metrics.functional import slaney_mel_filters


def _magnitudes(audio: torch.Tensor, n_fft: int, hop_length: int, win_length: int) -> torch.Tensor:
    """|STFT| of (batch, 1, samples) audio as (batch, freq, frames), float32, floored away from zero."""
    window = torch.hann_window(win_length, device=audio.device)
    spectrum = torch.stft(
        audio.float().flatten(0, 1), n_fft, hop_length, win_length, window=window, center=True, return_complex=True
    )
    return spectrum.abs().clamp(min=1e-7)


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over resolutions of spectral convergence `‖|Y|−|X|‖/‖|Y|‖` plus the L1 distance of log magnitudes
    (and optionally of linear magnitudes), as in Yamamoto et al. (2019)."""

    def __init__(
        self,
        fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128, 64, 32),
        hop_sizes: Sequence[int] = (512, 256, 128, 64, 32, 16, 8),
        win_lengths: Sequence[int] = (2048, 1024, 512, 256, 128, 64, 32),
        w_sc: float = 1.0,
        w_log_mag: float = 1.0,
        w_lin_mag: float = 0.0,
    ):
        super().__init__()
        if not len(fft_sizes) == len(hop_sizes) == len(win_lengths) or not fft_sizes:
            raise ValueError("fft_sizes, hop_sizes and win_lengths must be non-empty and of one length.")
        self.resolutions = list(zip(fft_sizes, hop_sizes, win_lengths))
        self.w_sc, self.w_log_mag, self.w_lin_mag = w_sc, w_log_mag, w_lin_mag

    def forward(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = predicted.new_zeros((), dtype=torch.float32)
        for n_fft, hop, win in self.resolutions:
            x, y = _magnitudes(predicted, n_fft, hop, win), _magnitudes(target, n_fft, hop, win)
            if self.w_sc:
                total = total + self.w_sc * torch.linalg.norm(y - x) / torch.linalg.norm(y)
            if self.w_log_mag:
                total = total + self.w_log_mag * F.l1_loss(torch.log(x), torch.log(y))
            if self.w_lin_mag:
                total = total + self.w_lin_mag * F.l1_loss(x, y)
        return total / len(self.resolutions)


class MultiResolutionMelLoss(nn.Module):
    """Sum over window lengths (hop = window / 4) of the L1 distance of log10 mel magnitudes (raised to `pow`,
    floored at `clamp_eps`) weighted by `log_weight`, plus that of the mel magnitudes weighted by `mag_weight`."""

    def __init__(
        self,
        sample_rate: int,
        n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        pow: float = 1.0,
        log_weight: float = 1.0,
        mag_weight: float = 0.0,
        clamp_eps: float = 1e-5,
    ):
        super().__init__()
        if len(n_mels) != len(window_lengths) or not n_mels:
            raise ValueError("n_mels and window_lengths must be non-empty and of one length.")
        self.window_lengths = list(window_lengths)
        self.pow, self.log_weight, self.mag_weight, self.clamp_eps = pow, log_weight, mag_weight, clamp_eps
        for index, (mels, window) in enumerate(zip(n_mels, window_lengths)):
            filters = slaney_mel_filters(window, mels, sample_rate)
            self.register_buffer(f"filters_{index}", filters.float().contiguous(), persistent=False)

    def forward(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = predicted.new_zeros((), dtype=torch.float32)
        for index, window in enumerate(self.window_lengths):
            filters = getattr(self, f"filters_{index}")  # (mels, freq)
            x = filters @ _magnitudes(predicted, window, window // 4, window)
            y = filters @ _magnitudes(target, window, window // 4, window)
            if self.log_weight:
                log_x = x.clamp(min=self.clamp_eps).pow(self.pow).log10()
                log_y = y.clamp(min=self.clamp_eps).pow(self.pow).log10()
                total = total + self.log_weight * F.l1_loss(log_x, log_y)
            if self.mag_weight:
                total = total + self.mag_weight * F.l1_loss(x, y)
        return total


def _weight_normed_conv2d(in_channels, out_channels, kernel_size, stride=(1, 1), dilation=(1, 1)) -> nn.Module:
    padding = ((kernel_size[0] - 1) * dilation[0] // 2, (kernel_size[1] - 1) * dilation[1] // 2)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, padding=padding)
    return nn.utils.parametrizations.weight_norm(conv)


class STFTDiscriminator(nn.Module):
    """One scale of the MS-STFT discriminator (EnCodec, Défossez et al. 2022): 2D convolutions over the real and
    imaginary parts of a normalized complex STFT, dilated along time, strided along frequency."""

    def __init__(
        self,
        filters: int,
        n_fft: int,
        hop_length: int,
        win_length: int,
        kernel_size: Sequence[int] = (3, 9),
        dilations: Sequence[int] = (1, 2, 4),
        stride: Sequence[int] = (1, 2),
        filters_scale: int = 1,
        max_filters: int = 1024,
    ):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        kernel_size, stride = tuple(kernel_size), tuple(stride)
        square = (kernel_size[0], kernel_size[0])
        widths = [min(filters_scale**power * filters, max_filters) for power in range(len(dilations) + 2)]
        layers = [_weight_normed_conv2d(2, widths[0], kernel_size)]
        for index, dilation in enumerate(dilations):
            layers.append(_weight_normed_conv2d(widths[index], widths[index + 1], kernel_size, stride, (dilation, 1)))
        layers.append(_weight_normed_conv2d(widths[len(dilations)], widths[-1], square))
        self.layers = nn.ModuleList(layers)
        self.output = _weight_normed_conv2d(widths[-1], 1, square)
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spectrum = torch.stft(
            audio.float().flatten(0, 1),
            self.n_fft,
            self.hop_length,
            self.win_length,
            window=self.window,
            center=False,
            normalized=True,
            return_complex=True,
        )
        hidden = torch.stack((spectrum.real, spectrum.imag), dim=1).transpose(2, 3)  # (batch, 2, frames, freq)
        features = []
        for layer in self.layers:
            hidden = self.activation(layer(hidden))
            features.append(hidden)
        return self.output(hidden), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """STFT discriminators at several resolutions; `loss` gives the hinge losses and feature matching."""

    def __init__(
        self,
        filters: int = 32,
        n_ffts: Sequence[int] = (2048, 1024, 512, 256, 128),
        hop_lengths: Sequence[int] = (512, 256, 128, 64, 32),
        win_lengths: Sequence[int] = (2048, 1024, 512, 256, 128),
        **scale_kwargs,
    ):
        super().__init__()
        if not len(n_ffts) == len(hop_lengths) == len(win_lengths) or not n_ffts:
            raise ValueError("n_ffts, hop_lengths and win_lengths must be non-empty and of one length.")
        self.scales = nn.ModuleList(
            STFTDiscriminator(filters, n_fft, hop, win, **scale_kwargs)
            for n_fft, hop, win in zip(n_ffts, hop_lengths, win_lengths)
        )

    def forward(self, audio: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [scale(audio) for scale in self.scales]


def discriminator_hinge_loss(outputs, num_real: int) -> torch.Tensor:
    """Hinge loss of the discriminator on the outputs of one call on `cat([reals, fakes])`."""
    total = 0.0
    for logits, _ in outputs:
        real, fake = logits[:num_real].float(), logits[num_real:].float()
        total = total + F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return total / len(outputs)


def generator_adversarial_losses(outputs, num_real: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hinge adversarial loss, feature-matching L1 distance) of the generator, averaged over scales (and layers)."""
    adversarial, matching = 0.0, 0.0
    for logits, features in outputs:
        adversarial = adversarial - logits[num_real:].float().mean()
        distances = [F.l1_loss(f[num_real:].float(), f[:num_real].float().detach()) for f in features]
        matching = matching + sum(distances) / len(distances)
    return adversarial / len(outputs), matching / len(outputs)


def ctc_loss(
    logits: torch.Tensor, frame_lengths: torch.Tensor, targets: list[torch.Tensor], blank: int
) -> torch.Tensor:
    """Mean CTC loss (per target length, as torch's 'mean'); infinite losses of impossible alignments become 0."""
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (frames, batch, classes)
    target_lengths = torch.tensor([len(target) for target in targets], dtype=torch.long)
    flat_targets = (
        torch.cat([target.long().cpu() for target in targets]) if targets else torch.zeros(0, dtype=torch.long)
    )
    return F.ctc_loss(
        log_probs,
        flat_targets.to(logits.device),
        frame_lengths.long().to(logits.device),
        target_lengths.to(logits.device),
        blank=blank,
        reduction="mean",
        zero_infinity=True,
    )


__all__ = [
    "MultiResolutionMelLoss",
    "MultiResolutionSTFTLoss",
    "MultiScaleSTFTDiscriminator",
    "STFTDiscriminator",
    "ctc_loss",
    "discriminator_hinge_loss",
    "generator_adversarial_losses",
]
