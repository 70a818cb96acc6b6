"""The training package: phonemes, PER, data (crops, augmentation, bad clips), losses, EMA, the Accelerate loop
(resume, NaN stop, export) and a 2-process run through `accelerate launch`."""

import io
import json
import os
import pathlib
import subprocess
import tarfile

import numpy as np
import pyloudnorm
import pytest
import torch
import yaml
from safetensors.torch import load_file

from transformers_stable_codec import StableCodecModel
from transformers_stable_codec.training import (
    BLANK_INDEX,
    NUM_CTC_CLASSES,
    PHONEME_INVENTORY,
    ConfigError,
    ExponentialMovingAverage,
    ForceAlignedAudioDataset,
    NonFiniteLossError,
    Phonemizer,
    StableCodecCTCHead,
    StableCodecTrainer,
    config_from_dict,
    greedy_ctc_decode,
    phone_error_rate,
    words_in_window,
)
from transformers_stable_codec.training.data import (
    SKIP_REASONS,
    AugmentationConfig,
    HFDatasetSource,
    RawClip,
    ShardSource,
)
from transformers_stable_codec.training.losses import (
    MultiResolutionMelLoss,
    MultiResolutionSTFTLoss,
    MultiScaleSTFTDiscriminator,
    ctc_loss,
    discriminator_hinge_loss,
    generator_adversarial_losses,
)
from transformers_stable_codec.training.synthetic_corpus import (
    HELDOUT_VARIANTS,
    VOCABULARY,
    VOICES,
    build_corpus,
    many_speakers,
)
from transformers_stable_codec.training.trainer import scale_invariant_sdr

from .conftest import accelerate_cpu_launch
from .conftest import tiny_config as tiny_model_config


REPO = pathlib.Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> pathlib.Path:
    """12 training and 4 held-out espeak-ng sentences, as shards and as a `datasets` dataset; and a shard of two
    unusable clips (`broken-000000.tar`: undecodable audio, no transcript)."""
    folder = tmp_path_factory.mktemp("corpus")
    build_corpus(folder, train=12, validation=4, seed=3, shard_size=5, max_words=5)
    with (
        tarfile.open(folder / "train-000000.tar") as source,
        tarfile.open(folder / "broken-000000.tar", "w") as target,
    ):
        good_audio = next(member for member in source.getmembers() if member.name.endswith(".flac"))
        members = [
            ("garbled.flac", b"not audio at all"),
            ("garbled.json", json.dumps({"force_aligned_text": {"transcript": []}}).encode()),
            ("untranscribed.flac", source.extractfile(good_audio).read()),
            ("untranscribed.json", b'{"text": "no alignment"}'),
        ]
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            target.addfile(info, io.BytesIO(payload))
    return folder


def tiny_config(corpus: pathlib.Path, output_dir: pathlib.Path, **training) -> dict:
    values = yaml.safe_load(TINY_CONFIG.read_text())
    values["data"]["train"]["path"] = str(corpus / "train-*.tar")
    values["data"]["validation"]["path"] = str(corpus / "validation-*.tar")
    values["training"]["output_dir"] = str(output_dir)
    values["training"].update(training)
    return values


# --- phonemes and PER -----------------------------------------------------------------------------------------


def test_inventory_is_the_originals_80_symbols_plus_blank():
    assert len(PHONEME_INVENTORY) == 80 and len(set(PHONEME_INVENTORY)) == 80
    assert BLANK_INDEX == 80 and NUM_CTC_CLASSES == 81
    assert PHONEME_INVENTORY[:4] == ("|", "AH0", "T", "N") and PHONEME_INVENTORY[-3:] == ("..", ";", ":")
    vowels = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()
    consonants = "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split()
    arpabet = {f"{vowel}{stress}" for vowel in vowels for stress in "012"} | set(consonants)
    assert arpabet <= set(PHONEME_INVENTORY)  # all 69 ARPAbet phonemes with stress...
    assert set(PHONEME_INVENTORY) - arpabet == {"|", ",", ".", "'", "?", "!", "-", "...", "..", ";", ":"}


def test_phonemizer_known_words_punctuation_and_fallbacks():
    phonemizer = Phonemizer()
    assert phonemizer.phonemes("Hello, world!") == [
        "HH",
        "AH0",
        "L",
        "OW1",
        "|",
        ",",
        "|",
        "W",
        "ER1",
        "L",
        "D",
        "|",
        "!",
    ]
    assert phonemizer.encode("the cat") == [PHONEME_INVENTORY.index(s) for s in ["DH", "AH0", "|", "K", "AE1", "T"]]
    assert phonemizer.phonemes("42") == ["F", "AO1", "R", "|", "T", "UW1"]  # digits read one by one
    # Unknown words: split into the fewest dictionary words, else spelled letter by letter.
    assert "catdog" not in phonemizer.lexicon
    assert phonemizer.phonemes("catdog") == phonemizer.phonemes("cat") + phonemizer.phonemes("dog")
    assert phonemizer.phonemes("xq") == list(phonemizer.word_phonemes("x") + phonemizer.word_phonemes("q"))
    assert phonemizer.decode([2, 80]) == ["T", "<blank>"]
    assert all(word in phonemizer.lexicon for word in VOCABULARY)  # the synthetic corpus needs no fallback


def test_greedy_ctc_decode_merges_repeats_and_drops_blanks():
    path = torch.tensor([[3, 3, 80, 3, 7, 7, 80, 80, 1], [5, 5, 5, 80, 6, 6, 6, 6, 6]])
    logits = torch.nn.functional.one_hot(path, 81).float()
    assert greedy_ctc_decode(logits) == [[3, 3, 7, 1], [5, 6]]
    assert greedy_ctc_decode(logits, lengths=torch.tensor([5, 3])) == [[3, 3, 7], [5]]


def test_phone_error_rate_known_values():
    assert phone_error_rate([[1, 2, 3]], [[1, 2, 3]]) == 0.0
    assert phone_error_rate([[1, 2, 4]], [[1, 2, 3]]) == pytest.approx(1 / 3)  # a substitution
    assert phone_error_rate([[1, 2]], [[1, 2, 3, 4]]) == pytest.approx(2 / 4)  # two deletions
    assert phone_error_rate([[9, 1, 2, 3, 9]], [[1, 2, 3]]) == pytest.approx(2 / 3)  # insertions can pass 1
    # Corpus level: errors over all reference phonemes, not a mean of ratios.
    assert phone_error_rate([[1], [5, 6, 7, 8]], [[2], [5, 6, 7, 8]]) == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="no phonemes"):
        phone_error_rate([[1]], [[]])


# --- data -----------------------------------------------------------------------------------------------------


def test_crop_keeps_exactly_the_words_that_overlap_it():
    words = [
        ("before", 0.0, 0.4),
        ("cut_left", 0.5, 1.1),
        ("inside", 1.2, 1.5),
        ("cut_right", 1.8, 2.4),
        ("after", 2.6, 3.0),
    ]
    assert words_in_window(words, 1.0, 2.0) == ["cut_left", "inside", "cut_right"]
    assert words_in_window([("spanning", 0.0, 3.0)], 1.0, 2.0) == ["spanning"]
    assert words_in_window(words, 2.45, 2.55) == []


class ListSource:
    def __init__(self, clips):
        self.clips = clips

    def __len__(self):
        return len(self.clips)

    def read(self, index):
        clip = self.clips[index]
        if isinstance(clip, Exception):
            raise clip
        return clip


def spoken_words(rate=16000):
    """One second of tone per word, one second of silence between: 'one' 0-1 s, 'two' 2-3 s, 'three' 4-5 s."""
    audio = np.zeros(5 * rate, dtype=np.float32)
    for start in (0, 2, 4):
        audio[start * rate : (start + 1) * rate] = 0.3 * np.sin(np.arange(rate) * 2 * np.pi * 200 / rate)
    transcript = {
        "transcript": [
            {"word": w, "start": float(s), "end": float(s + 1)} for w, s in (("one", 0), ("two", 2), ("three", 4))
        ]
    }
    return audio, transcript


def test_dataset_crops_carry_the_phonemes_of_their_words():
    _, transcript = spoken_words()
    ramp = (np.arange(5 * 16000) / 1e6).astype(np.float32)  # each sample tells its position: the crop's offset
    dataset = ForceAlignedAudioDataset(
        ListSource([RawClip(ramp, 16000, transcript, "clip")]),
        16000,
        sample_size=24000,
        phonemizer=Phonemizer(),
        seed=1,
    )
    phonemizer = Phonemizer()
    seen = set()
    for epoch in range(16):
        item = dataset[epoch * len(dataset)]  # the key of index 0 in each epoch, as EpochSampler gives it
        assert item["audio"].shape == (1, 24000) and bool(item["padding_mask"].all())
        start = round(float(item["audio"][0, 0]) * 1e6) / 16000
        end = start + 1.5
        expected = [w["word"] for w in transcript["transcript"] if w["start"] <= end and w["end"] >= start]
        assert item["text"] == " ".join(expected)
        assert item["phonemes"].tolist() == phonemizer.encode(item["text"])
        seen.add(item["text"])
    assert len(seen) >= 3  # random crops land in different places across epochs
    short = ForceAlignedAudioDataset(
        ListSource([RawClip(ramp[:16000], 16000, {"transcript": transcript["transcript"][:1]}, "s")]),
        16000,
        sample_size=24000,
        phonemizer=Phonemizer(),
    )[0]
    assert (
        short["padding_mask"].sum() == 16000 and short["audio"][0, 16000:].abs().sum() == 0 and short["text"] == "one"
    )


def test_bad_clips_are_skipped_with_their_reasons():
    audio, transcript = spoken_words()
    good = RawClip(audio, 16000, transcript, "good")
    late = {"transcript": [{"word": "late", "start": 4.5, "end": 6.0}]}
    clips = [
        RawClip(audio, 16000, None, "no transcript"),
        RawClip(audio, 16000, late, "words past the end"),
        RawClip(audio, 16000, '{"transcript": [{"word": "x"}]}', "malformed"),
        good,
    ]
    dataset = ForceAlignedAudioDataset(ListSource(clips), 16000, sample_size=16000, phonemizer=Phonemizer())
    item = dataset[0]
    assert item["name"] == "good"
    assert [reason for reason, _ in item["skipped"]] == [
        "missing transcript",
        "word timings outside the audio",
        "malformed transcript",
    ]
    assert "late" in item["skipped"][1][1]

    broken = ForceAlignedAudioDataset(
        ListSource([RawClip(audio, 16000, None, "x")] * 3), 16000, phonemizer=Phonemizer(), max_consecutive_bad=3
    )
    with pytest.raises(RuntimeError, match="3 consecutive clips .* missing transcript"):
        broken[0]


def test_unreadable_audio_in_a_shard_is_skipped(tmp_path, corpus):
    shard = tmp_path / "mixed.tar"
    with tarfile.open(corpus / "train-000000.tar") as source, tarfile.open(shard, "w") as target:
        for member in source.getmembers()[:4]:  # two good clips
            target.addfile(member, source.extractfile(member))
        for name, payload in (
            ("broken.flac", b"not audio at all"),
            ("broken.json", json.dumps({"force_aligned_text": {"transcript": []}}).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            target.addfile(info, io.BytesIO(payload))
    source = ShardSource(str(shard))
    assert len(source) == 3
    dataset = ForceAlignedAudioDataset(source, 16000, phonemizer=Phonemizer())
    index = next(i for i, sample in enumerate(source.samples) if sample.key == "broken")
    item = dataset[index]
    assert item["skipped"][0][0] == "unreadable audio" and "broken" in item["skipped"][0][1]


def test_loudness_augmentation_and_phase_flip_are_random_but_reproducible():
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal(16000)).astype(np.float32)
    clip = RawClip(audio, 16000, None, "noise")  # as long as the crop: no offset, so the sign can be read off
    dataset = ForceAlignedAudioDataset(
        ListSource([clip] * 40), 16000, sample_size=16000, augmentation=AugmentationConfig(-20.0, 5.0, 0.5), seed=7
    )
    meter = pyloudnorm.Meter(16000)
    loudness, signs = [], []
    for index in range(40):
        item = dataset[index]
        crop = item["audio"][0].numpy().astype(np.float64)
        loudness.append(meter.integrated_loudness(crop))
        signs.append(float(crop @ audio) > 0)
        assert torch.equal(item["audio"], dataset[index]["audio"])  # same (seed, epoch, index), same item
    assert all(-25.01 < value < -14.99 for value in loudness)
    assert np.std(loudness) > 1.5  # targets spread over the ±5 LU range
    assert 8 < sum(signs) < 32  # about half flipped


# --- losses ---------------------------------------------------------------------------------------------------


def test_spectral_losses_are_zero_for_identical_audio_and_grow_with_distortion():
    torch.manual_seed(0)
    real = torch.randn(2, 1, 8000) * 0.1
    stft = MultiResolutionSTFTLoss(fft_sizes=[512, 128], hop_sizes=[128, 32], win_lengths=[512, 128])
    mel = MultiResolutionMelLoss(16000, n_mels=[40], window_lengths=[512])
    assert float(stft(real, real)) == pytest.approx(0.0, abs=1e-6) and float(mel(real, real)) == pytest.approx(
        0.0, abs=1e-6
    )
    slightly, badly = real + 0.01 * torch.randn_like(real), real + 0.1 * torch.randn_like(real)
    assert 0 < float(stft(slightly, real)) < float(stft(badly, real))
    assert 0 < float(mel(slightly, real)) < float(mel(badly, real))
    # Halving the amplitude: spectral convergence 0.5 and |log 0.5| per resolution, whatever the content.
    assert float(stft(0.5 * real, real)) == pytest.approx(0.5 + np.log(2), rel=1e-3)


def test_si_sdr_known_values():
    torch.manual_seed(0)
    reference = torch.randn(1, 1, 4000)
    noise = torch.randn(1, 1, 4000)
    noise = noise - (noise.flatten() @ reference.flatten()) / (reference.flatten() @ reference.flatten()) * reference
    noise = noise / noise.norm() * reference.norm() / 10  # orthogonal, 20 dB below
    assert float(scale_invariant_sdr(3 * reference + 3 * noise - 3 * noise.mean(), reference)) == pytest.approx(
        20.0, abs=0.1
    )


def test_discriminator_hinge_and_feature_matching():
    logits = [(torch.tensor([2.0, 0.5, -2.0, 0.5]).view(4, 1), [torch.tensor([[1.0], [2.0], [1.5], [2.0]])])]
    # reals: 2.0 and 0.5 -> relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25; fakes: -2.0, 0.5 -> relu(-1)=0, relu(1.5) -> 0.75
    assert float(discriminator_hinge_loss(logits, 2)) == pytest.approx(1.0)
    adversarial, matching = generator_adversarial_losses(logits, 2)
    assert float(adversarial) == pytest.approx(0.75) and float(matching) == pytest.approx(0.25)
    discriminator = MultiScaleSTFTDiscriminator(
        filters=4, n_ffts=[256, 128], hop_lengths=[64, 32], win_lengths=[256, 128]
    )
    outputs = discriminator(torch.randn(3, 1, 4000))
    assert len(outputs) == 2 and all(logit.shape[0] == 3 and len(features) == 5 for logit, features in outputs)


def test_ctc_loss_prefers_the_right_alignment_and_survives_impossible_ones():
    target = torch.tensor([4, 5])
    right = torch.full((1, 6, 81), -5.0)
    for frame, label in enumerate([4, 4, 80, 5, 5, 80]):
        right[0, frame, label] = 5.0
    wrong = right.roll(1, dims=-1)
    frames = torch.tensor([6])
    assert float(ctc_loss(right, frames, [target], 80)) < 0.1 < float(ctc_loss(wrong, frames, [target], 80))
    assert float(ctc_loss(right, torch.tensor([1]), [torch.tensor([4, 5, 6])], 80)) == 0.0  # too short: zeroed


# --- EMA ------------------------------------------------------------------------------------------------------


def test_ema_follows_the_warmup_decay_and_swaps_in_and_out():
    parameter = torch.nn.Parameter(torch.tensor([0.0]))
    ema = ExponentialMovingAverage([parameter], beta=0.9999, power=0.75)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 4.0, 8.0]):
        with torch.no_grad():
            parameter.fill_(value)
        decay = min(0.9999, 1 - (1 + step) ** -0.75)
        expected = decay * expected + (1 - decay) * value
        ema.update()
        assert float(ema.shadow[0]) == pytest.approx(expected)
    assert ema.decay() == pytest.approx(1 - 5**-0.75)
    with ema.applied():
        assert float(parameter.detach()) == pytest.approx(expected)
    assert float(parameter.detach()) == 8.0
    big = ExponentialMovingAverage([parameter], beta=0.9, power=0.75)
    big.updates = 10**6
    assert big.decay() == 0.9  # capped at beta


# --- configuration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: v["training"].update(learning_rat=1), r"Unknown key\(s\) \['learning_rat'\] in `config.training`"),
        (lambda v: v["model"].update(use_proj_head=False), "use_ctc` needs `model.use_proj_head"),
        (lambda v: v["training"]["loss_configs"]["ctc"].update(blank_idx=0), "blank_idx` must be 80"),
        (lambda v: v["model"].update(proj_head_dim=82), "proj_head_dim` must be 81"),
        (lambda v: v["training"].update(mixed_precision="fp8"), "mixed_precision"),
        (lambda v: v["training"]["loss_configs"]["spectral"].update(weight={"mrstft": 1}), "Unknown key"),
        (lambda v: v["training"]["eval_loss_configs"].update(pesq={}), "Unknown metric"),
        (lambda v: v["training"].update(batch_size="8"), "`config.training.batch_size` must be int"),
    ],
)
def test_invalid_configs_name_the_key(tmp_path, change, message):
    values = tiny_config(tmp_path, tmp_path / "out")
    change(values)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


def test_wrong_loss_options_name_their_section(tmp_path, corpus):
    values = tiny_config(corpus, tmp_path / "out")
    values["training"]["loss_configs"]["mrmel"]["config"]["n_mel"] = [20]
    with pytest.raises(ConfigError, match=r"`training.loss_configs.mrmel.config`: .*'n_mel'"):
        StableCodecTrainer(config_from_dict(values))


# --- the loop -------------------------------------------------------------------------------------------------


def final_state(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    discriminator = trainer.accelerator.unwrap_model(trainer.discriminator).state_dict()
    return model, discriminator, [tensor.clone() for tensor in trainer.ema.shadow]


def test_resumed_training_is_identical_to_uninterrupted_training(tmp_path, corpus):
    """6 steps at once versus 3, a checkpoint, a fresh trainer resuming, 3 more: bit-identical weights, EMA and
    discriminator (gradient accumulation, workers, data order, augmentation, FSQ dither and RNG all restored)."""
    settings = dict(
        max_steps=6, checkpoint_every=3, validate_every=100, validate_at_start=False, gradient_accumulation_steps=2
    )
    values = tiny_config(corpus, tmp_path / "straight", **settings)
    values["data"]["num_workers"] = 1
    values["data"]["train"]["path"] = [str(corpus / "train-*.tar"), str(corpus / "broken-*.tar")]  # 2 of 14 unusable
    straight = StableCodecTrainer(config_from_dict(values))
    straight.train()
    expected = final_state(straight)
    assert straight.progress.batches_in_epoch + straight.progress.epoch * 7 == 12  # 2 micro-batches per step
    # Both unusable clips come up in the 24 items of 12 batches (every clip of the first epoch is drawn), are
    # skipped, counted and logged; the run goes on.
    skipped = dict(zip(SKIP_REASONS, straight.skipped))
    assert skipped["unreadable audio"] >= 1 and skipped["missing transcript"] >= 1
    logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["data/skipped_clips"] for entry in logged if "data/skipped_clips" in entry][-1] == sum(
        straight.skipped
    )

    values["training"]["output_dir"] = str(tmp_path / "interrupted")
    first = StableCodecTrainer(config_from_dict({**values, "training": {**values["training"], "max_steps": 3}}))
    first.train()
    second = StableCodecTrainer(config_from_dict(values))
    assert second.resume("latest").name == "step_00000003"
    second.train()
    assert second.skipped == straight.skipped  # the skip counts travel with the checkpoint
    for ours, theirs in zip(final_state(second), expected):
        items = zip(ours.values(), theirs.values()) if isinstance(ours, dict) else zip(ours, theirs)
        assert all(torch.equal(a, b) for a, b in items)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(expected[0].values(), first.accelerator.unwrap_model(first.model).state_dict().values())
    )


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, corpus, monkeypatch):
    values = tiny_config(
        corpus, tmp_path / "run", max_steps=10, checkpoint_every=2, validate_every=100, validate_at_start=False
    )
    trainer = StableCodecTrainer(config_from_dict(values))
    terms = trainer._generator_terms

    def poisoned(batch):
        values = terms(batch)
        if trainer.progress.step == 4:
            values["mrmel_loss"] = values["mrmel_loss"] * float("nan")
        return values

    monkeypatch.setattr(trainer, "_generator_terms", poisoned)
    with pytest.raises(
        NonFiniteLossError, match=r"step 4 \(mrmel_loss, loss\).*last good checkpoint is .*step_00000004"
    ):
        trainer.train()
    checkpoints = sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002", "step_00000004"]  # nothing written after the NaN
    weights = load_file(tmp_path / "run" / "checkpoints" / "step_00000004" / "model.safetensors")
    assert all(bool(torch.isfinite(tensor).all()) for tensor in weights.values())
    resumed = StableCodecTrainer(config_from_dict(values))
    resumed.resume("latest")
    assert resumed.progress.step == 4
    live = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    assert all(torch.equal(live[name], tensor) for name, tensor in weights.items())


def test_export_is_a_plain_model_with_the_ema_weights_and_the_head(tmp_path, corpus):
    values = tiny_config(corpus, tmp_path / "run", max_steps=4, validate_every=2, checkpoint_every=100)
    values["data"]["train"] = {"type": "hf", "path": str(corpus / "hf" / "train")}  # the datasets source
    trainer = StableCodecTrainer(config_from_dict(values))
    results = trainer.train()
    assert set(results) == {"step", "val/per", "val/stft", "val/sisdr", "val/ctc_loss"} and results["val/per"] > 0
    assert [entry["step"] for entry in trainer.validation_history] == [0, 2, 4]
    folder = trainer.export(tmp_path / "export")
    model = StableCodecModel.from_pretrained(folder)
    head = StableCodecCTCHead.from_pretrained(folder)
    live = trainer.accelerator.unwrap_model(trainer.model)
    with trainer.ema.applied():
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, live.codec.state_dict()[name]), name
        assert all(torch.equal(t, live.head.state_dict()[n]) for n, t in head.state_dict().items())
    assert any(not torch.equal(t, live.codec.state_dict()[n]) for n, t in model.state_dict().items())  # EMA, not live
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["train/mrstft_loss"] > 0 for entry in logged if "train/mrstft_loss" in entry] == [True, True]


def test_hf_dataset_and_shards_hold_the_same_corpus(corpus):
    shards, table = (
        ShardSource(str(corpus / "validation-*.tar")),
        HFDatasetSource(__import__("datasets").load_from_disk(str(corpus / "hf" / "validation"))),
    )
    assert len(shards) == len(table) == 4
    for index in range(4):
        a, b = shards.read(index), table.read(index)
        assert np.array_equal(a.audio, b.audio) and a.transcript == b.transcript


def test_synthetic_corpus_timings_are_exact(corpus):
    source = ShardSource(str(corpus / "train-*.tar"))
    for index in range(len(source)):
        clip = source.read(index)
        words = clip.transcript["transcript"]
        bounds = [(round(w["start"] * 16000), round(w["end"] * 16000)) for w in words]
        for start, end in bounds:
            assert np.abs(clip.audio[start : start + 80]).max() > 0 and np.abs(clip.audio[end - 80 : end]).max() > 0
        silent = np.ones(len(clip.audio), dtype=bool)
        for start, end in bounds:
            silent[start:end] = False
        assert np.abs(clip.audio[silent]).max() == 0  # nothing but pauses between and around the words


def test_the_many_speaker_set_holds_its_evaluation_voices_out():
    trained, heldout = many_speakers()
    assert len(trained) == 88 and len(heldout) == 8 and trained[: len(VOICES)] == VOICES
    assert len({name for name, _, _ in trained + heldout}) == 96  # no speaker twice
    assert not {name.split("+")[1] for name, _, _ in trained if "+" in name} & set(HELDOUT_VARIANTS)
    assert many_speakers() == (trained, heldout)  # rates and pitches are fixed, so corpora and evaluations agree


def test_validation_sentences_do_not_depend_on_the_training_size(tmp_path):
    """scripts/evaluate_demo.py speaks the validation sentences of a corpus without training sentences: they must be
    the first validation sentences of every corpus of the same seed, or training could have heard them."""

    def texts(folder):
        return [row["text"] for row in read_validation(folder)]

    def read_validation(folder):
        with tarfile.open(folder / "validation-000000.tar") as archive:
            return [
                json.loads(archive.extractfile(member).read())
                for member in archive.getmembers()
                if member.name.endswith(".json")
            ]

    build_corpus(tmp_path / "small", train=0, validation=2, formats=("shards",), voices=VOICES[:1])
    build_corpus(tmp_path / "large", train=6, validation=3, formats=("shards",), voices=VOICES[:2])
    assert texts(tmp_path / "small") == texts(tmp_path / "large")[:2]


# --- accelerate launch, 2 processes ---------------------------------------------------------------------------


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path, corpus):
    """DDP over gloo, in bf16 autocast: both processes end with the same weights (gradients were averaged although
    each saw other clips), the run exports, and the CLI's exit status says it succeeded."""
    values = tiny_config(
        corpus, tmp_path / "ddp", max_steps=4, checkpoint_every=4, validate_every=4, mixed_precision="bf16"
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    # On a machine without GPUs, `--multi_gpu` with ACCELERATE_USE_CPU runs one process per rank over gloo.
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = accelerate_cpu_launch(2, "bf16", "transformers_stable_codec.training", "--config", str(config))
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "ddp" / "checkpoints" / "step_00000004"
    first, second = (torch.load(checkpoint / f"process_{rank}.pt", weights_only=True)["ema"] for rank in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first["shadow"], second["shadow"]))
    assert (tmp_path / "ddp" / "export" / "model.safetensors").is_file()
    assert result.stdout.count("exported the EMA model") == 1  # printed by the main process only
    logged = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    speeds = [entry["train/samples_per_second"] for entry in logged if "train/samples_per_second" in entry]
    assert speeds and all(speed > 0 for speed in speeds)


# --- command line and report ------------------------------------------------------------------------------------


def test_cli_refuses_a_bad_configuration_with_status_2(tmp_path, capsys):
    from transformers_stable_codec.training.cli import main

    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"training": {"max_step": 5}}))
    assert main(["--config", str(config)]) == 2
    assert "Unknown key(s) ['max_step'] in `config.training`" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_run_report_summarizes_plots_and_writes_the_model_card(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("report", REPO / "scripts" / "report_training_run.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    run = tmp_path / "run"
    run.mkdir()
    entries = [{"step": 0, "val/per": 1.2, "val/stft": 5.0, "val/mel": 7.0, "val/sisdr": -40.0, "val/ctc_loss": 12.0}]
    entries += [
        {
            "step": step,
            "train/mrstft_loss": 6.0 - step / 100,
            "train/ctc_loss": 9.0 - step / 50,
            "train/samples_per_second": speed,
            "data/skipped_clips": 2.0,
        }
        for step, speed in ((25, 10.0), (50, 200.0), (75, 210.0), (100, 190.0))
    ]
    entries += [
        {"step": 100, "val/per": 0.3, "val/stft": 2.5, "val/mel": 3.0, "val/sisdr": -10.0, "val/ctc_loss": 2.0}
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    train, validation = report.read_metrics(run / "metrics.jsonl")
    summary = report.summarize(run, train, validation)
    assert summary["steps"] == 100 and summary["skipped_clips"] == 2.0
    assert summary["train"]["mrstft_loss"] == {"first": 5.75, "last": 5.0}
    assert summary["samples_per_second_median"] == 200.0  # the first interval (start-up) left out
    assert summary["validation_first"]["val/per"] == 1.2 and summary["validation_last"]["val/per"] == 0.3
    report.plot(train, validation, tmp_path / "curves.png", "test")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    export = tmp_path / "export"
    StableCodecModel(tiny_model_config()).save_pretrained(export)
    report.write_model_card(export, summary, minutes=6.0, device="NVIDIA H100 x 1")
    card = (export / "README.md").read_text()
    assert "A demonstration, not a speech codec" in card and "| 120.0% | 30.0% |" in card and "NVIDIA H100 x 1" in card


def test_the_shipped_demo_model_is_the_default_and_says_what_it_is():
    import pathlib

    from transformers_stable_codec import StableCodecModel
    from transformers_stable_codec.command_support import DEFAULT_MODEL, default_model

    folder = pathlib.Path(default_model())
    assert folder == DEFAULT_MODEL and folder.parent.name == "transformers_stable_codec"
    assert sum(path.stat().st_size for path in folder.iterdir()) <= 25 * 2**20
    card = (folder / "README.md").read_text()
    assert "A demonstration, not a speech codec for real use" in card and "espeak-ng" in card
    assert "| phone error rate, held-out sentences (greedy CTC) | 49.1% | 35.3% |" in card
    model = StableCodecModel.from_pretrained(folder)
    assert model.config.attention_window == (15, 16) and 5e6 < sum(p.numel() for p in model.parameters()) < 6e6
