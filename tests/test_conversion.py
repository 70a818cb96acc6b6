"""Original checkpoints: conversion script, on-the-fly loading (local folders and an offline Hub cache), errors."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from transformers_stable_codec import OriginalCheckpointError, StableCodecConfig, StableCodecModel

from .conftest import FIXTURES


REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CONVERTER = REPO_ROOT / "conversion" / "convert_stable_codec_checkpoint.py"
SMALL_A, SMALL_B = FIXTURES / "parity" / "small_a", FIXTURES / "parity" / "small_b"


def original_folder(tmp_path, source=SMALL_A, weights="model.safetensors", transform=None) -> pathlib.Path:
    """A copy of a fixture in the original layout, with its weights as `weights` (safetensors or a Lightning-style
    ckpt), optionally transformed."""
    folder = tmp_path / f"original-{source.name}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "model_config.json", folder / "model_config.json")
    state_dict = load_file(source / "model.safetensors")
    if transform is not None:
        state_dict = transform(state_dict)
    if weights.endswith(".ckpt"):
        torch.save({"state_dict": state_dict, "global_step": 500_000}, folder / weights)
    else:
        save_file(state_dict, folder / weights)
    return folder


def encode_fixture(model, source=SMALL_A):
    reference = load_file(source / "reference.safetensors")
    with torch.no_grad():
        encoded = model.encode(reference["input_values"], posthoc_bottleneck="2x15625_700bps")
        audio = model.decode(encoded.audio_codes, posthoc_bottleneck="2x15625_700bps").audio_values
    return encoded.latents, encoded.audio_codes, audio


def run_converter(*args, check=True):
    return subprocess.run(
        [sys.executable, str(CONVERTER), *map(str, args)],
        capture_output=True,
        text=True,
        check=check,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("converted")
    source = original_folder(tmp_path, weights="model.ckpt")
    dump = tmp_path / "stable-codec-speech-16k"
    result = run_converter(
        "--config_path",
        source / "model_config.json",
        "--checkpoint_path",
        source / "model.ckpt",
        "--pytorch_dump_folder_path",
        dump,
    )
    return dump, result


def test_converter_writes_the_model_preprocessor_and_card(converted):
    dump, result = converted
    assert sorted(path.name for path in dump.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert "Converting weights" in result.stderr  # progress bar
    card = (dump / "README.md").read_text()
    assert "license: other" in card and "license_name: stability-ai-community" in card
    assert "library_name: transformers" in card and "pipeline_tag: audio-to-audio" in card
    assert "| `2x15625_700bps` | 2 | 15,625 | 697 |" in card and "| `4x729_1000bps` | 4 | 729 | 951 |" in card
    assert "finetuned with a CTC phoneme head" in card and 'AutoModel.from_pretrained("' in card
    config = json.loads((dump / "config.json").read_text())
    assert config["model_type"] == "stable_codec" and (
        config["attention_window_left"],
        config["attention_window_right"],
    ) == (7, 8)


def test_converted_on_the_fly_and_reloaded_models_are_identical(converted, tmp_path):
    dump, _ = converted
    converted_model = AutoModel.from_pretrained(dump)
    on_the_fly = AutoModel.from_pretrained(original_folder(tmp_path))
    assert isinstance(on_the_fly, StableCodecModel)
    for ours, theirs in zip(encode_fixture(converted_model), encode_fixture(on_the_fly)):
        assert torch.equal(ours, theirs)
    converted_model.save_pretrained(tmp_path / "resaved")
    reloaded = StableCodecModel.from_pretrained(tmp_path / "resaved")
    for key, value in converted_model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_converter_dtype_and_variant(tmp_path):
    source = original_folder(tmp_path, source=SMALL_B)
    dump = tmp_path / "stable-codec-speech-16k-base"
    run_converter(
        "--config_path",
        source / "model_config.json",
        "--checkpoint_path",
        source / "model.safetensors",
        "--pytorch_dump_folder_path",
        dump,
        "--dtype",
        "bfloat16",
        "--variant",
        "base",
    )
    weights = load_file(dump / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}
    assert "the base model before the CTC finetune" in (dump / "README.md").read_text()


def test_verify_without_the_original_says_so(tmp_path):
    source = original_folder(tmp_path)
    result = run_converter(
        "--config_path",
        source / "model_config.json",
        "--checkpoint_path",
        source / "model.safetensors",
        "--pytorch_dump_folder_path",
        tmp_path / "out",
        "--verify",
    )
    assert "--verify: the original stable-codec is not importable here" in result.stdout


def test_both_weight_norm_layouts_and_both_file_formats_load_the_same_weights(tmp_path):
    def to_parametrizations(state_dict):
        renamed = {}
        for key, value in state_dict.items():
            key = key.replace(".weight_g", ".parametrizations.weight.original0")
            renamed[key.replace(".weight_v", ".parametrizations.weight.original1")] = value
        return renamed

    reference = StableCodecModel.from_original_checkpoint(
        SMALL_A / "model_config.json", SMALL_A / "model.safetensors"
    ).state_dict()
    for weights, transform in (("model.ckpt", None), ("model.safetensors", to_parametrizations)):
        folder = original_folder(tmp_path / weights, weights=weights, transform=transform)
        loaded = StableCodecModel.from_original_checkpoint(folder / "model_config.json", folder / weights).state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in reference.items())


# --- the published repos, from an offline Hugging Face cache --------------------------------------------------------


def populate_hub_cache(hub_cache: pathlib.Path, repo_id: str, source: pathlib.Path, weights: str, tmp_path):
    """The cache layout huggingface_hub writes: blobs, a snapshot per commit, and refs/main naming it."""
    commit = "0123456789abcdef0123456789abcdef0123" + ("4567" if weights.endswith("ckpt") else "89ab")
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    prepared = original_folder(tmp_path / repo_id.replace("/", "_"), source=source, weights=weights)
    for name in ("model_config.json", weights):
        shutil.copy(prepared / name, snapshot / name)
    (repo / ".no_exist" / commit).mkdir(parents=True)
    (repo / ".no_exist" / commit / "config.json").touch()  # what the hub client records for a missing file


def test_published_repo_ids_load_offline_from_the_cache(tmp_path):
    hf_home = tmp_path / "hf_home"
    populate_hub_cache(hf_home / "hub", "stabilityai/stable-codec-speech-16k", SMALL_A, "model.ckpt", tmp_path)
    populate_hub_cache(
        hf_home / "hub", "stabilityai/stable-codec-speech-16k-base", SMALL_B, "model.safetensors", tmp_path
    )
    script = """
import sys, torch
import transformers_stable_codec
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
from safetensors.torch import load_file, save_file
out = {}
for name, repo_id in (("a", "stabilityai/stable-codec-speech-16k"), ("b", "stabilityai/stable-codec-speech-16k-base")):
    assert AutoConfig.from_pretrained(repo_id).model_type == "stable_codec"
    model = AutoModel.from_pretrained(repo_id)
    extractor = AutoFeatureExtractor.from_pretrained(repo_id)
    assert (extractor.hop_length, extractor.sampling_rate) == (model.config.hop_length, 16000), repo_id
    inputs = load_file(sys.argv[1 if name == "a" else 2])["input_values"]
    with torch.no_grad():
        out[name] = model.encode(inputs).audio_codes
save_file(out, sys.argv[3])
"""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop("HF_HUB_CACHE", None)
    codes_file = tmp_path / "codes.safetensors"
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            SMALL_A / "reference.safetensors",
            SMALL_B / "reference.safetensors",
            codes_file,
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    codes = load_file(codes_file)
    for name, source in (("a", SMALL_A), ("b", SMALL_B)):
        assert torch.equal(codes[name], load_file(source / "reference.safetensors")["codes"].transpose(1, 2))


def test_one_load_looks_each_hub_file_up_once(tmp_path, monkeypatch):
    """AutoModel reaches the config loader and the model loader, and the feature extractor comes next: together they
    ask the Hub for each file of the original layout once."""
    import huggingface_hub
    from transformers import AutoFeatureExtractor

    from transformers_stable_codec import original_checkpoint

    populate_hub_cache(tmp_path / "hub", "stabilityai/stable-codec-speech-16k", SMALL_A, "model.ckpt", tmp_path)
    requested = []
    download = huggingface_hub.hf_hub_download

    def counting_download(repo_id, filename, **kwargs):
        requested.append(filename)
        return download(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", counting_download)
    monkeypatch.setattr(original_checkpoint, "_hub_lookups", {})
    options = dict(cache_dir=tmp_path / "hub", local_files_only=True)
    model = AutoModel.from_pretrained("stabilityai/stable-codec-speech-16k", **options)
    extractor = AutoFeatureExtractor.from_pretrained("stabilityai/stable-codec-speech-16k", **options)
    assert isinstance(model, StableCodecModel) and extractor.hop_length == model.config.hop_length
    assert sorted(requested) == ["config.json", "model.ckpt", "model.safetensors", "model_config.json"]


# --- errors ----------------------------------------------------------------------------------------------------------


def test_truncated_and_corrupt_checkpoints_give_a_clear_error(tmp_path):
    for weights in ("model.safetensors", "model.ckpt"):
        folder = original_folder(tmp_path / weights, weights=weights)
        data = (folder / weights).read_bytes()
        (folder / weights).write_bytes(data[: len(data) // 2])
        with pytest.raises(OriginalCheckpointError, match="could not read the checkpoint"):
            StableCodecModel.from_pretrained(folder)
    folder = tmp_path / "no-state-dict"
    folder.mkdir()
    shutil.copy(SMALL_A / "model_config.json", folder)
    torch.save({"weights": {}}, folder / "model.ckpt")
    with pytest.raises(OriginalCheckpointError, match="holds no 'state_dict'"):
        StableCodecModel.from_pretrained(folder)


def test_a_config_that_does_not_match_the_weights_is_refused(tmp_path):
    folder = original_folder(tmp_path, source=SMALL_B)
    shutil.copy(SMALL_A / "model_config.json", folder / "model_config.json")  # small_a's config, small_b's weights
    with pytest.raises(OriginalCheckpointError, match="do not fit its config|does not match its config"):
        StableCodecModel.from_pretrained(folder)
    extra = original_folder(tmp_path / "extra", transform=lambda sd: {**sd, "discriminator.weight": torch.zeros(1)})
    with pytest.raises(OriginalCheckpointError, match=r"1 unexpected keys \['discriminator.weight'\]"):
        StableCodecModel.from_pretrained(extra)
    missing = original_folder(
        tmp_path / "missing", transform=lambda sd: {k: v for k, v in sd.items() if "ff_scale" not in k}
    )
    with pytest.raises(OriginalCheckpointError, match=r"4 missing keys .*feed_forward_scale.scale"):
        StableCodecModel.from_pretrained(missing)


def test_a_folder_with_neither_layout_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OriginalCheckpointError, match="holds no Stable Codec checkpoint"):
        StableCodecModel.from_pretrained(tmp_path / "empty")
    (tmp_path / "config-only").mkdir()
    shutil.copy(SMALL_A / "model_config.json", tmp_path / "config-only")
    with pytest.raises(OriginalCheckpointError, match="neither model.safetensors nor model.ckpt"):
        AutoModel.from_pretrained(tmp_path / "config-only")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["model"]["encoder"]["config"].update(conformer=True), "conformer=true is not supported"),
        (lambda c: c["model"]["decoder"]["config"].update(use_snake=True), "use_snake=true is not supported"),
        (lambda c: c["model"]["encoder"]["config"].update(use_dilated_conv=True), "use_dilated_conv=true"),
        (lambda c: c["model"]["encoder"].update(type="oobleck"), "encoder type 'oobleck' is not supported"),
        (lambda c: c["model"]["bottleneck"].update(type="rvq"), "bottleneck type 'rvq' is not supported"),
        (lambda c: c["model"]["pretransform"].update(type="pqmf"), "pretransform type 'pqmf' is not supported"),
        (lambda c: c["model"]["bottleneck"]["config"].update(num_codebooks=2), "num_codebooks=1"),
        (lambda c: c["model"]["decoder"]["config"].update(sliding_window=[3, 3]), "disagree on sliding_window"),
        (lambda c: c.update(model_type="diffusion_cond"), "model_type 'diffusion_cond' is not supported"),
    ],
)
def test_unsupported_original_options_are_refused_by_name(edit, message):
    original = json.loads((SMALL_A / "model_config.json").read_text())
    edit(original)
    with pytest.raises(OriginalCheckpointError, match=message):
        StableCodecConfig.from_original_config(original)


def test_auto_classes_still_raise_their_own_errors_for_other_folders(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(ValueError, match="not-a-model"):
        AutoConfig.from_pretrained(tmp_path / "other")


def test_config_and_feature_extractor_load_from_an_original_folder():
    from transformers import AutoFeatureExtractor

    from transformers_stable_codec import StableCodecConfig, StableCodecFeatureExtractor

    assert StableCodecConfig.from_pretrained(SMALL_B).stage_widths == [128, 256]
    for loader in (AutoFeatureExtractor, StableCodecFeatureExtractor):
        extractor = loader.from_pretrained(SMALL_B)
        assert isinstance(extractor, StableCodecFeatureExtractor) and extractor.hop_length == 512
