"""The training configuration: a YAML or JSON file in the original's layout (`model`, `training` with
`loss_configs` and `eval_loss_configs`) plus `data`, read strictly: an unknown or mistyped key is an error."""

import copy
import dataclasses
import json
import pathlib
import typing

import yaml

from .phonemes import BLANK_INDEX, NUM_CTC_CLASSES


class ConfigError(ValueError):
    """A training configuration that cannot be used, with the key at fault in the message."""


@dataclasses.dataclass
class ModelSection:
    pretrained: str | None = None  # folder or Hub id (our format or the original layout); None: train from scratch
    config: dict = dataclasses.field(default_factory=dict)  # StableCodecConfig fields, when training from scratch
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    use_proj_head: bool = True
    proj_head_dim: int = NUM_CTC_CLASSES
    proj_head_width: int = 256
    detach_proj_head: bool = False
    proj_head_pretrained: str | None = None  # folder holding ctc_head.safetensors (e.g. a previous export)


@dataclasses.dataclass
class OptimizerConfig:
    lr: float = 1e-4
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 1e-3
    eps: float = 1e-8


@dataclasses.dataclass
class SchedulerConfig:
    name: str = "constant_with_warmup"  # any transformers.get_scheduler name
    warmup_steps: int = 0  # optimizer steps of each model
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EMAConfig:
    beta: float = 0.9999  # the original's decay
    power: float = 0.75  # warmup: decay after n updates is min(beta, 1 - (1 + n) ** -power)


@dataclasses.dataclass
class TrainingSection:
    output_dir: str = "outputs/stable-codec-finetune"
    seed: int = 0
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    max_steps: int = 10000  # optimizer steps, discriminator steps included
    max_minutes: float | None = None  # stop (checkpoint, export) once this much wall-clock time has passed
    use_ctc: bool = True
    use_ema: bool = True
    ema: EMAConfig = dataclasses.field(default_factory=EMAConfig)
    clip_grad_norm: float = 0.0  # 0: no clipping
    optimizer_configs: dict = dataclasses.field(default_factory=dict)  # {"autoencoder": ..., "discriminator": ...}
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    loss_configs: dict = dataclasses.field(default_factory=dict)
    eval_loss_configs: dict = dataclasses.field(default_factory=dict)
    log_every: int = 10
    validate_every: int = 1000
    validate_at_start: bool = True
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    trackers: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])


@dataclasses.dataclass
class DataSection:
    train: dict = dataclasses.field(default_factory=dict)  # a source: {"type": "hf" | "shards", ...}
    validation: dict | None = None
    sample_size: int = 32000  # samples per training crop
    random_crop: bool = True
    volume_norm: bool = True
    volume_norm_param: list[float] = dataclasses.field(default_factory=lambda: [-20.0, 5.0])  # LUFS target, ± range
    phase_flip_probability: float = 0.5
    num_workers: int = 2
    validation_max_clips: int | None = None
    validation_batch_size: int = 8


@dataclasses.dataclass
class TrainConfig:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    training: TrainingSection = dataclasses.field(default_factory=TrainingSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The loss and metric sections, with the keys each takes (None: free-form keyword arguments of the loss class).
LOSS_SECTIONS = {
    "spectral": {"config": None, "weights": {"mrstft"}, "decay": float},
    "mrmel": {"config": None, "weights": {"mrmel"}, "decay": float},
    "time": {"weights": {"l1", "l2"}, "decay": float},
    "discriminator": {
        "type": str,
        "config": None,
        "weights": {"adversarial", "feature_matching"},
        "warmup_steps": int,
        "warmup_mode": str,
    },
    "ctc": {"blank_idx": int, "decay": float, "weights": {"ctc"}},
}
EVAL_SECTIONS = ("per", "stft", "mel", "sisdr")


def _build(cls, values, path: str):
    if not isinstance(values, dict):
        raise ConfigError(f"`{path}` must be a mapping, got {type(values).__name__}.")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in `{path}`; known: {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{path}.{name}")
        else:
            kwargs[name] = _check_type(value, hint, f"{path}.{name}")
    return cls(**kwargs)


def _check_type(value, hint, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        if value is None and type(None) in args:
            return None
        hint = next(arg for arg in args if arg is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"`{path}` must be {getattr(expected, '__name__', expected)}, got {value!r}.")
    if expected is list and args:
        return [_check_type(item, args[0], f"{path}[{index}]") for index, item in enumerate(value)]
    return value


def _check_loss_sections(training: TrainingSection) -> None:
    for name, section in training.loss_configs.items():
        if name not in LOSS_SECTIONS:
            raise ConfigError(f"Unknown loss `training.loss_configs.{name}`; known: {sorted(LOSS_SECTIONS)}.")
        schema = LOSS_SECTIONS[name]
        if not isinstance(section, dict):
            raise ConfigError(f"`training.loss_configs.{name}` must be a mapping.")
        unknown = sorted(set(section) - set(schema))
        if unknown:
            raise ConfigError(f"Unknown key(s) {unknown} in `training.loss_configs.{name}`; known: {sorted(schema)}.")
        weights = section.get("weights", {})
        if not isinstance(weights, dict) or set(weights) - schema["weights"]:
            raise ConfigError(
                f"`training.loss_configs.{name}.weights` takes {sorted(schema['weights'])}, got {weights!r}."
            )
        for key, value in weights.items():
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"`training.loss_configs.{name}.weights.{key}` must be a non-negative number.")
        if "config" in section and not isinstance(section["config"], dict):
            raise ConfigError(f"`training.loss_configs.{name}.config` must be a mapping of keyword arguments.")
    discriminator = training.loss_configs.get("discriminator")
    if discriminator is not None:
        if discriminator.get("type", "encodec") != "encodec":
            raise ConfigError(
                "`training.loss_configs.discriminator.type` must be 'encodec' (the multi-scale STFT discriminator)."
            )
        if discriminator.get("warmup_mode", "adv") not in ("adv", "full"):
            raise ConfigError("`training.loss_configs.discriminator.warmup_mode` must be 'adv' or 'full'.")
    unknown = sorted(set(training.eval_loss_configs) - set(EVAL_SECTIONS))
    if unknown:
        raise ConfigError(
            f"Unknown metric(s) {unknown} in `training.eval_loss_configs`; known: {list(EVAL_SECTIONS)}."
        )


def validate(config: TrainConfig) -> TrainConfig:
    """Checks the combinations a single field cannot, naming the keys involved."""
    model, training, data = config.model, config.training, config.data
    _check_loss_sections(training)
    if training.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(
            f"`training.mixed_precision` must be 'no', 'bf16' or 'fp16', got {training.mixed_precision!r}."
        )
    for name in (
        "batch_size",
        "gradient_accumulation_steps",
        "max_steps",
        "log_every",
        "validate_every",
        "checkpoint_every",
        "keep_checkpoints",
    ):
        if getattr(training, name) < 1:
            raise ConfigError(f"`training.{name}` must be at least 1.")
    if training.max_minutes is not None and training.max_minutes <= 0:
        raise ConfigError("`training.max_minutes` must be positive (or null).")
    if not 0 < training.ema.beta < 1 or training.ema.power <= 0:
        raise ConfigError("`training.ema.beta` must lie in (0, 1) and `training.ema.power` be positive.")
    unknown = sorted(set(training.optimizer_configs) - {"autoencoder", "discriminator"})
    if unknown:
        raise ConfigError(
            f"Unknown optimizer(s) {unknown} in `training.optimizer_configs`: use 'autoencoder' or 'discriminator'."
        )
    training.optimizer_configs = {
        name: _build(OptimizerConfig, training.optimizer_configs.get(name, {}), f"training.optimizer_configs.{name}")
        for name in ("autoencoder", "discriminator")
    }
    if not any(key in training.loss_configs for key in ("spectral", "mrmel", "time")):
        raise ConfigError("`training.loss_configs` needs a reconstruction loss: 'spectral', 'mrmel' or 'time'.")
    if training.use_ctc:
        if not model.use_proj_head:
            raise ConfigError("`training.use_ctc` needs `model.use_proj_head: true` (the CTC head reads the latents).")
        if "ctc" not in training.loss_configs:
            raise ConfigError("`training.use_ctc` needs `training.loss_configs.ctc` (blank_idx, decay, weights.ctc).")
        if training.loss_configs["ctc"].get("blank_idx", BLANK_INDEX) != BLANK_INDEX:
            raise ConfigError(
                f"`training.loss_configs.ctc.blank_idx` must be {BLANK_INDEX}: the phoneme inventory fills indices "
                "0-79."
            )
    elif "ctc" in training.loss_configs or "per" in training.eval_loss_configs:
        raise ConfigError(
            "`training.loss_configs.ctc` and `training.eval_loss_configs.per` need `training.use_ctc: true`."
        )
    if model.use_proj_head and model.proj_head_dim != NUM_CTC_CLASSES:
        raise ConfigError(
            f"`model.proj_head_dim` must be {NUM_CTC_CLASSES} (80 phoneme symbols and the blank), got "
            f"{model.proj_head_dim}."
        )
    if model.use_proj_head and not training.use_ctc:
        raise ConfigError(
            "`model.use_proj_head` without `training.use_ctc` would train nothing: enable both or neither."
        )
    if not data.train:
        raise ConfigError("`data.train` must name a source: {type: hf, path: ...} or {type: shards, path: ...}.")
    if data.validation is None and (training.eval_loss_configs or training.validate_at_start):
        raise ConfigError("`training.eval_loss_configs` and `training.validate_at_start` need `data.validation`.")
    if len(data.volume_norm_param) != 2 or data.volume_norm_param[1] < 0:
        raise ConfigError("`data.volume_norm_param` is [target LUFS, range] with a non-negative range.")
    if not 0 <= data.phase_flip_probability <= 1:
        raise ConfigError("`data.phase_flip_probability` must be a probability.")
    if data.sample_size < 1:
        raise ConfigError("`data.sample_size` must be positive.")
    return config


def config_from_dict(values: dict) -> TrainConfig:
    values = copy.deepcopy(values)
    training = values.get("training")
    if isinstance(training, dict) and training.get("mixed_precision") is False:
        training["mixed_precision"] = "no"  # YAML 1.1 reads a bare `no` as false
    return validate(_build(TrainConfig, values, "config"))


def set_override(values: dict, assignment: str) -> None:
    """Applies `a.b.c=value` (value read as YAML) to a nested mapping."""
    key, separator, raw = assignment.partition("=")
    if not separator or not key:
        raise ConfigError(f"An override reads KEY.PATH=VALUE, got {assignment!r}.")
    *parents, last = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Override {assignment!r}: `{part}` is not a mapping.")
    node[last] = yaml.safe_load(raw)


def load_config(path, overrides: list[str] = ()) -> TrainConfig:
    """Reads a YAML (`.yaml`, `.yml`) or JSON file, applies `KEY.PATH=VALUE` overrides, validates."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"No configuration file at {path}.")
    text = path.read_text()
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    values = values or {}
    for assignment in overrides:
        set_override(values, assignment)
    return config_from_dict(values)


__all__ = ["ConfigError", "TrainConfig", "config_from_dict", "load_config", "set_override"]
