"""The two signal-processing steps the original Stable Codec applies to a file before encoding it, in torch, batched,
on any device: the windowed-sinc resampler of its `torchaudio.transforms.Resample` (default arguments) and the
ITU-R BS.1770-4 loudness meter of its `torchaudio.transforms.Loudness`.

Both are written to give the original's numbers (float32 resampling with the same float32 kernel; the meter's
float32 biquad coefficients and its [-1, 1] clamp), not just the same algorithm: see docs/feature_extractor.md.
"""

import functools
import math

import torch


LOWPASS_FILTER_WIDTH = 6  # zero crossings of the sinc on each side
ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency
# Resampling kernels above this many elements are not built whole: rates with a large reduced ratio (44101 -> 16000 has
# 16000 phases of 44135 taps, 2.8 GB) take only the taps each phase can reach, a block of outputs at a time.
MAX_KERNEL_ELEMENTS = 2**22

GATE_SECONDS = 0.4
GATE_OVERLAP = 0.75
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
K_WEIGHTING_OFFSET = -0.691
# A filter's impulse response is taken to have ended once its pole radius has decayed by this factor.
_IMPULSE_RESPONSE_FLOOR = 1e-20


def reduced_ratio(orig_freq: int, new_freq: int) -> tuple[int, int]:
    divisor = math.gcd(orig_freq, new_freq)
    return orig_freq // divisor, new_freq // divisor


def resampled_length(length: int, orig_freq: int, new_freq: int) -> int:
    """Samples of a `length`-sample signal resampled from `orig_freq` to `new_freq`: ceil(length * new / orig)."""
    return -(-length * new_freq // orig_freq)


def _kernel_width(orig: int, new: int) -> int:
    """Input samples the kernel reaches on either side (in reduced units)."""
    return math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))


def _sinc_weights(orig: int, new: int, phases: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Polyphase weights, float32: output phase i (output sample n * new + i) weighs padded input sample
    n * orig + k (k a column) with a Hann-windowed sinc at the distance between the two in time. `phases` is (P,) and
    `columns` (P, C) or (1, C) integers. As the original does, the weights are computed in float64 except for the
    phase offset i / new, which it computes in float32, and are then rounded to float32."""
    width = _kernel_width(orig, new)
    cutoff = min(orig, new) * ROLLOFF
    phase = phases.to(torch.float32) / new
    offset = (columns - width).to(torch.float64) / orig
    time = (offset - phase.double()[:, None]) * cutoff
    time = time.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(time * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    time = time * math.pi
    sinc = torch.where(time == 0, torch.ones_like(time), torch.sin(time) / time)
    return (sinc * (window * (cutoff / orig))).float()


@functools.lru_cache(maxsize=16)
def _dense_kernel(orig: int, new: int, device: torch.device) -> torch.Tensor:
    """Every phase over every column, (new, 1, orig + 2 * width): torchaudio's kernel, kept for the next call."""
    columns = torch.arange(orig + 2 * _kernel_width(orig, new), device=device)[None, :]
    return _sinc_weights(orig, new, torch.arange(new, device=device), columns)[:, None, :]


@functools.lru_cache(maxsize=4)
def _sparse_kernel(orig: int, new: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per phase only the columns that can be non-zero: (new, taps) column indices and weights. Outside
    |time| < LOWPASS_FILTER_WIDTH the window is cos(pi/2)^2 ~ 4e-33 and the sinc ~ 4e-17, whose product underflows to
    exactly 0 in float32, so the columns left out hold zeros in the dense kernel too."""
    width = _kernel_width(orig, new)
    reach = LOWPASS_FILTER_WIDTH / (min(orig, new) * ROLLOFF)  # in input seconds times orig: see _sinc_weights
    taps = math.ceil(2 * reach * orig) + 3
    phases = torch.arange(new, device=device)
    first = torch.floor(width + orig * (phases.double() / new - reach)).long() - 1
    first = first.clamp(0, orig + 2 * width - taps)
    columns = first[:, None] + torch.arange(taps, device=device)
    return columns, _sinc_weights(orig, new, phases, columns)


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Resamples `waveform` (..., time) from `orig_freq` to `new_freq` Hz, both integers, along the last axis.

    Band-limited interpolation with a Hann-windowed sinc (6 zero crossings, cutoff at 0.99 of the lower Nyquist
    frequency), the rates reduced by their greatest common divisor: the default `torchaudio.transforms.Resample`, to
    float32 rounding. Returns float32 with `resampled_length(time, orig_freq, new_freq)` samples; signals that differ
    only by trailing zeros give the same output over the shorter one's length, so a batch may be zero-padded.
    """
    if orig_freq == new_freq:
        return waveform.float()
    orig, new = reduced_ratio(orig_freq, new_freq)
    width = _kernel_width(orig, new)
    leading, length = waveform.shape[:-1], waveform.shape[-1]
    signals = waveform.reshape(-1, length).float()
    # Output frame n (output samples n * new .. n * new + new - 1) reads input n * orig - width .. + orig + width.
    padded = torch.nn.functional.pad(signals, (width, width + orig))
    kept = resampled_length(length, orig, new)
    if new * (orig + 2 * width) <= MAX_KERNEL_ELEMENTS:
        # torchaudio's computation: one strided convolution with every phase as an output channel. On GPUs without
        # TF32, which cuDNN would otherwise use.
        kernel = _dense_kernel(orig, new, waveform.device)
        cudnn = torch.backends.cudnn
        with cudnn.flags(cudnn.enabled, cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False):
            phases = torch.nn.functional.conv1d(padded[:, None], kernel, stride=orig)
        # (signals, phase, frame) -> time-ordered output samples frame * new + phase.
        resampled = phases.transpose(1, 2).reshape(signals.shape[0], -1)[:, :kept]
    else:
        # A rate with a large reduced ratio (44101:16000): each output sample gathers its own taps, in blocks.
        columns, weights = _sparse_kernel(orig, new, waveform.device)
        resampled = torch.empty(signals.shape[0], kept, device=waveform.device)
        block = max(1, MAX_KERNEL_ELEMENTS // (columns.shape[1] * signals.shape[0]))
        for start in range(0, kept, block):
            output = torch.arange(start, min(start + block, kept), device=waveform.device)
            phase = output % new
            taps = padded[:, (output // new * orig)[:, None] + columns[phase]]  # (signals, outputs, taps)
            resampled[:, start : start + block] = (taps * weights[phase]).sum(-1)
    return resampled.reshape(*leading, -1)


def _k_weighting_coefficients(sample_rate: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(b, a) of BS.1770's two K-weighting stages, a high shelf (+4 dB above 1.5 kHz) then a high-pass (38 Hz), as
    torchaudio designs them (Audio EQ Cookbook, as SoX): in float32, which the original uses, normalized by a0 in
    float32. Returned in float64 for filtering."""

    def normalized(b, a):
        b, a = torch.stack(b), torch.stack(a)
        return (b / a[0]).double(), (a / a[0]).double()

    def f32(value):
        return torch.tensor(value, dtype=torch.float32, device=device)

    # High shelf: gain 4 dB, centre 1500 Hz, Q 1/sqrt(2).
    w0 = 2 * math.pi * f32(1500.0) / sample_rate
    alpha = torch.sin(w0) / 2 / f32(1 / math.sqrt(2))
    gain = torch.exp(f32(4.0) / 40 * math.log(10))
    root_alpha = 2 * torch.sqrt(gain) * alpha
    minus, plus = (gain - 1) * torch.cos(w0), (gain + 1) * torch.cos(w0)
    shelf = normalized(
        [
            gain * ((gain + 1) + minus + root_alpha),
            -2 * gain * ((gain - 1) + plus),
            gain * ((gain + 1) + minus - root_alpha),
        ],
        [(gain + 1) - minus + root_alpha, 2 * ((gain - 1) - plus), (gain + 1) - minus - root_alpha],
    )
    # High-pass: 38 Hz, Q 0.5.
    w0 = 2 * math.pi * f32(38.0) / sample_rate
    alpha = torch.sin(w0) / 2.0 / f32(0.5)
    cosine = torch.cos(w0)
    b0 = (1 + cosine) / 2
    highpass = normalized([b0, -1 - cosine, b0], [1 + alpha, -2 * cosine, 1 - alpha])
    return [shelf, highpass]


def _impulse_response_length(a: torch.Tensor) -> int:
    """Samples after which a stable biquad's impulse response has fallen below _IMPULSE_RESPONSE_FLOOR."""
    a1, a2 = float(a[1]), float(a[2])
    discriminant = complex(a1 * a1 - 4 * a2) ** 0.5
    radius = max(abs((-a1 + discriminant) / 2), abs((-a1 - discriminant) / 2))
    if radius >= 1.0:
        raise ValueError(f"Unstable K-weighting filter (pole radius {radius}).")
    # A double pole decays as n * r^n: allow for the factor n with a generous margin.
    return 2 * math.ceil(math.log(_IMPULSE_RESPONSE_FLOOR) / math.log(radius)) + 16


@functools.lru_cache(maxsize=16)
def _k_weighting_responses(sample_rate: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency responses of the high shelf and of the whole K-weighting at the bins of a `size`-point real FFT."""
    frequency = torch.fft.rfftfreq(size, device=device, dtype=torch.float64)
    z = torch.exp(-2j * math.pi * frequency)  # z^-1 on the unit circle
    shelf, highpass = (
        (b[0] + b[1] * z + b[2] * z * z) / (a[0] + a[1] * z + a[2] * z * z)
        for b, a in _k_weighting_coefficients(sample_rate, device)
    )
    return shelf, shelf * highpass


@functools.lru_cache(maxsize=16)
def _shelf_peak_gain(sample_rate: int, device: torch.device) -> float:
    """The sum of |impulse response| of the high shelf: no output sample of it exceeds the input's peak times this."""
    shelf = _k_weighting_coefficients(sample_rate, device)[0]
    size = 1 << _impulse_response_length(shelf[1]).bit_length()
    impulse = torch.fft.irfft(_k_weighting_responses(sample_rate, size, device)[0], n=size)
    return float(impulse.abs().sum())


def _fast_fft_size(minimum: int) -> int:
    """The smallest 2^a 3^b 5^c >= minimum: FFTs of such sizes are fast, and it wastes less than a power of two."""
    best, power5 = 1 << (minimum - 1).bit_length(), 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35 << max(0, (-(-minimum // power35) - 1).bit_length())  # times the power of two that fits
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


# Long signals are filtered in blocks of this many samples (overlap-add), a group of blocks at a time: the work
# stays one batched FFT per group, while memory and the cached filter responses stay bounded by the block size.
_BLOCK = 1 << 16
_BLOCKS_PER_GROUP = 64


def _filter(signal: torch.Tensor, response: torch.Tensor, size: int) -> torch.Tensor:
    """Linear convolution of (batch, time) `signal` with the impulse response whose `size`-point spectrum is
    `response` (it must have decayed within `size - _BLOCK` samples): overlap-add of `_BLOCK`-sample blocks. The
    output has the input's length (the filters are causal)."""
    batch, length = signal.shape
    blocks = -(-length // _BLOCK)
    signal = torch.nn.functional.pad(signal, (0, blocks * _BLOCK - length)).view(batch, blocks, _BLOCK)
    output = signal.new_zeros(batch, blocks * _BLOCK + size)
    for first in range(0, blocks, _BLOCKS_PER_GROUP):
        group = signal[:, first : first + _BLOCKS_PER_GROUP]
        filtered = torch.fft.irfft(torch.fft.rfft(group, n=size) * response, n=size)  # (batch, blocks, size)
        # Each block's output starts at its block and runs `size - _BLOCK` samples into the next ones.
        start = first * _BLOCK
        count = group.shape[1]
        for offset in range(0, size, _BLOCK):
            piece = filtered[..., offset : offset + _BLOCK]
            width = piece.shape[-1]
            region = output[:, start + offset : start + offset + count * _BLOCK].view(batch, count, _BLOCK)
            region[..., :width] += piece
    return output[:, :length]


def k_weight(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """BS.1770 K-weighting of (batch, time) float signals, float64 out, each stage's output clamped to [-1, 1] as
    torchaudio's `lfilter` clamps it. Both recursive filters run as FFT convolutions with their impulse responses,
    taken well past where those have decayed (to 1e-20), which batches and runs on GPUs, unlike a loop."""
    signal = waveform.double()
    tail = max(_impulse_response_length(a) for _, a in _k_weighting_coefficients(sample_rate, signal.device))
    size = _fast_fft_size(_BLOCK + tail)
    shelf, k_weighting = _k_weighting_responses(sample_rate, size, signal.device)
    if float(signal.abs().max()) * _shelf_peak_gain(sample_rate, signal.device) > 1.0:
        # The clamp after the shelf may act: apply the stages one by one, clamping in between.
        shelved = _filter(signal, shelf, size).clamp(-1.0, 1.0)
        return _filter(shelved, k_weighting / shelf, size).clamp(-1.0, 1.0)
    return _filter(signal, k_weighting, size).clamp(-1.0, 1.0)


def integrated_loudness(waveform: torch.Tensor, sample_rate: int, lengths=None) -> torch.Tensor:
    """ITU-R BS.1770-4 integrated loudness in LUFS of mono signals (batch, time), float64, one value per signal.

    400 ms blocks with 75 % overlap (only whole blocks, starting at the first sample), an absolute gate at -70 LUFS
    and a relative gate 10 LU below the loudness of the blocks that pass it; `lengths` (default: all of `time`) gives
    each signal's own length in a zero-padded batch. NaN where a signal is shorter than one block or no block passes
    the absolute gate (the original raises or returns NaN there).
    """
    batch, time = waveform.shape
    lengths = torch.full((batch,), time) if lengths is None else torch.as_tensor(lengths)
    block = int(round(GATE_SECONDS * sample_rate))
    step = int(round(block * (1 - GATE_OVERLAP)))
    weighted = k_weight(waveform, sample_rate)
    if time < block:
        return torch.full((batch,), math.nan, dtype=torch.float64, device=waveform.device)
    # Mean square of each block from cumulative sums: one pass, however long the blocks.
    cumulative = torch.nn.functional.pad(torch.cumsum(weighted.square(), dim=-1), (1, 0))
    starts = torch.arange(0, time - block + 1, step, device=waveform.device)
    energy = (cumulative[:, starts + block] - cumulative[:, starts]) / block
    blocks = torch.div(lengths.to(waveform.device) - block, step, rounding_mode="floor") + 1
    exists = torch.arange(len(starts), device=waveform.device)[None, :] < blocks[:, None]

    def gated_loudness(mask):
        mean = (energy * mask).sum(-1) / mask.sum(-1)  # 0 / 0 = NaN where no block passes
        return K_WEIGHTING_OFFSET + 10 * torch.log10(mean)

    block_loudness = K_WEIGHTING_OFFSET + 10 * torch.log10(energy)
    passed = exists & (block_loudness > ABSOLUTE_GATE_LUFS)
    relative_gate = gated_loudness(passed) + RELATIVE_GATE_LU
    return gated_loudness(passed & (block_loudness > relative_gate[:, None]))
