"""The finetuning loop on Accelerate: data parallelism (DDP or FSDP, from `accelerate launch`), mixed precision,
gradient accumulation, an EMA of the weights, checkpoints that resume exactly, trackers, validation and export.

One optimizer step is one of two turns, as in the original: the autoencoder (reconstruction, CTC, adversarial and
feature-matching losses) or, once the discriminator is on, on odd steps, the discriminator (hinge loss).
"""

import contextlib
import dataclasses
import json
import math
import pathlib
import shutil
import time

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..configuration_stable_codec import StableCodecConfig
from ..modeling_stable_codec import StableCodecModel
from .config import ConfigError, TrainConfig
from .data import SKIP_REASONS, AugmentationConfig, EpochSampler, ForceAlignedAudioDataset, collate, source_from_config
from .heads import StableCodecCTCHead, StableCodecForCTCTraining
from .losses import (
    MultiResolutionMelLoss,
    MultiResolutionSTFTLoss,
    MultiScaleSTFTDiscriminator,
    ctc_loss,
    discriminator_hinge_loss,
    generator_adversarial_losses,
)
from .metrics import greedy_ctc_decode, phone_errors
from .phonemes import BLANK_INDEX, Phonemizer


logger = get_logger(__name__)
CHECKPOINT_PREFIX = "step_"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped before the optimizer step, without saving."""


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Checkpoints every transformer layer. transformers renamed `gradient_checkpointing_enable` to
    `activation_checkpointing_enable` within 5.x (the old name now warns); both are supported releases here."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The process's own part of a parameter: the shard of an FSDP DTensor, the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class ExponentialMovingAverage:
    """EMA of parameters, kept beside them (each process its own shard under FSDP): after `n` updates the decay
    is `min(beta, 1 - (1 + n) ** -power)`, so early averages follow the weights closely (the original's
    `EMA(beta=0.9999, power=3/4)` warmup). `applied()` swaps the averages in, e.g. for validation and export."""

    def __init__(self, parameters, beta: float, power: float):
        self.parameters = [parameter for parameter in parameters if parameter.requires_grad]
        self.shadow = [_local(parameter).detach().clone() for parameter in self.parameters]
        self.beta, self.power, self.updates = beta, power, 0

    def decay(self) -> float:
        return min(self.beta, 1.0 - (1.0 + self.updates) ** -self.power)

    @torch.no_grad()
    def update(self) -> None:
        current = [_local(parameter).detach() for parameter in self.parameters]
        torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay())
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for parameter, average in zip(self.parameters, self.shadow):
            local = _local(parameter)
            kept = local.detach().clone()
            local.copy_(average)
            average.copy_(kept)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": [tensor.cpu() for tensor in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("The EMA checkpoint does not match the model's parameters.")
        self.updates = state["updates"]
        for tensor, saved in zip(self.shadow, state["shadow"]):
            tensor.copy_(saved)


@dataclasses.dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps, both turns
    generator_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # batches each process consumed in the current epoch

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class StableCodecTrainer:
    """Builds everything a `TrainConfig` describes and runs it: `train()`, then `export(folder)`."""

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None):
        self.config = config
        training, model_section, data = config.training, config.model, config.data
        self.output_dir = pathlib.Path(training.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.accelerator = accelerator or Accelerator(
            mixed_precision=training.mixed_precision,
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=training.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            log_with=training.trackers or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
            step_scheduler_with_optimizer=False,
        )
        set_seed(training.seed)
        self.progress = Progress()
        self.skipped = [0] * len(SKIP_REASONS)  # this process's skipped clips, by reason
        self.skips_reported = 0
        self.validation_history: list[dict] = []

        codec = self._build_codec(model_section)
        self.codec_config = codec.config
        head = None
        if model_section.use_proj_head:
            if model_section.proj_head_pretrained:
                head = StableCodecCTCHead.from_pretrained(model_section.proj_head_pretrained)
            else:
                head = StableCodecCTCHead(
                    codec.config.latent_dim, model_section.proj_head_width, model_section.proj_head_dim
                )
        model = StableCodecForCTCTraining(codec, head, detach_head=model_section.detach_proj_head)
        model.train()

        losses = training.loss_configs
        sampling_rate = codec.config.sampling_rate
        self.terms = []  # (name, weight, decay) of the autoencoder's loss terms
        self.mrstft = self.mrmel = None
        if losses.get("spectral", {}).get("weights", {}).get("mrstft", 0) > 0:
            self.mrstft = _from_section(
                MultiResolutionSTFTLoss, "loss_configs.spectral.config", **losses["spectral"].get("config", {})
            )
            self.terms.append(
                ("mrstft_loss", losses["spectral"]["weights"]["mrstft"], losses["spectral"].get("decay", 1.0))
            )
        if losses.get("mrmel", {}).get("weights", {}).get("mrmel", 0) > 0:
            self.mrmel = _from_section(
                MultiResolutionMelLoss, "loss_configs.mrmel.config", sampling_rate, **losses["mrmel"].get("config", {})
            )
            self.terms.append(("mrmel_loss", losses["mrmel"]["weights"]["mrmel"], losses["mrmel"].get("decay", 1.0)))
        for kind in ("l1", "l2"):
            weight = losses.get("time", {}).get("weights", {}).get(kind, 0)
            if weight > 0:
                self.terms.append((f"{kind}_time_loss", weight, losses["time"].get("decay", 1.0)))
        if training.use_ctc:
            self.terms.append(
                ("ctc_loss", losses["ctc"].get("weights", {}).get("ctc", 1.0), losses["ctc"].get("decay", 1.0))
            )

        discriminator = None
        self.disc_section = losses.get("discriminator")
        if self.disc_section is not None:
            discriminator = _from_section(
                MultiScaleSTFTDiscriminator, "loss_configs.discriminator.config", **self.disc_section.get("config", {})
            )
            weights = self.disc_section.get("weights", {})
            self.terms.append(("loss_adv", weights.get("adversarial", 0.1), 1.0))
            self.terms.append(("feature_matching_loss", weights.get("feature_matching", 5.0), 1.0))

        optimizers = training.optimizer_configs
        gen_optimizer = self._optimizer(model.parameters(), optimizers["autoencoder"])
        gen_scheduler = self._scheduler(gen_optimizer)
        self.phonemizer = Phonemizer() if training.use_ctc else None
        train_loader = self._train_loader(data, sampling_rate)

        prepared = self.accelerator.prepare(model, gen_optimizer, gen_scheduler, train_loader)
        self.model, self.gen_optimizer, self.gen_scheduler, self.train_loader = prepared
        self.discriminator = self.disc_optimizer = self.disc_scheduler = None
        if discriminator is not None:
            disc_optimizer = self._optimizer(discriminator.parameters(), optimizers["discriminator"])
            prepared = self.accelerator.prepare(discriminator, disc_optimizer, self._scheduler(disc_optimizer))
            self.discriminator, self.disc_optimizer, self.disc_scheduler = prepared
        device = self.accelerator.device
        self.mrstft = self.mrstft.to(device) if self.mrstft is not None else None
        self.mrmel = self.mrmel.to(device) if self.mrmel is not None else None
        self.ema = None
        if training.use_ema:
            self.ema = ExponentialMovingAverage(self.model.parameters(), training.ema.beta, training.ema.power)
        self.accelerator.register_for_checkpointing(self.progress)

        self.validation_loader = None
        if data.validation is not None:
            self.validation_loader = self._validation_loader(data, sampling_rate)
        self.eval_metrics = self._eval_metrics(training.eval_loss_configs, sampling_rate)

    # --- construction ---------------------------------------------------------------------------------------

    @staticmethod
    def _build_codec(section) -> StableCodecModel:
        if section.pretrained:
            if section.config:
                raise ConfigError("Give either `model.pretrained` or `model.config` (a model from scratch), not both.")
            codec = StableCodecModel.from_pretrained(
                section.pretrained, attn_implementation=section.attn_implementation
            )
        else:
            codec = StableCodecModel(
                StableCodecConfig(**section.config, attn_implementation=section.attn_implementation)
            )
        if section.gradient_checkpointing:
            enable_activation_checkpointing(codec)
        return codec

    @staticmethod
    def _optimizer(parameters, settings) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            parameters,
            lr=settings.lr,
            betas=tuple(settings.betas),
            weight_decay=settings.weight_decay,
            eps=settings.eps,
        )

    def _scheduler(self, optimizer):
        """Steps once per optimizer step of its model; the horizon is that model's share of `max_steps`."""
        training = self.config.training
        share = (
            training.max_steps
            if self.config.training.loss_configs.get("discriminator") is None
            else training.max_steps // 2
        )
        return get_scheduler(
            training.scheduler.name,
            optimizer,
            num_warmup_steps=training.scheduler.warmup_steps,
            num_training_steps=max(share, 1),
            scheduler_specific_kwargs=training.scheduler.kwargs or None,
        )

    def _dataset(self, spec: dict, data, sampling_rate: int, training: bool) -> ForceAlignedAudioDataset:
        augmentation = None
        if training:
            target, spread = data.volume_norm_param
            augmentation = AugmentationConfig(
                target if data.volume_norm else None, spread, data.phase_flip_probability
            )
        return ForceAlignedAudioDataset(
            source_from_config(spec),
            sampling_rate,
            sample_size=data.sample_size if training else None,
            random_crop=data.random_crop,
            augmentation=augmentation,
            phonemizer=self.phonemizer,
            seed=self.config.training.seed,
        )

    def _train_loader(self, data, sampling_rate: int) -> torch.utils.data.DataLoader:
        dataset = self._dataset(data.train, data, sampling_rate, training=True)
        batch_size, processes = self.config.training.batch_size, self.accelerator.num_processes
        if len(dataset) < batch_size * processes:
            raise ValueError(
                f"The training data has {len(dataset)} clips: fewer than one batch ({batch_size}) per process "
                f"({processes})."
            )
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochSampler(len(dataset), self.config.training.seed),
            drop_last=True,
            num_workers=data.num_workers,
            collate_fn=collate,
            persistent_workers=data.num_workers > 0,
            # A loader of its own draws worker seeds: the global generator (FSQ dither) stays untouched.
            generator=torch.Generator().manual_seed(self.config.training.seed),
        )

    def _validation_loader(self, data, sampling_rate: int) -> torch.utils.data.DataLoader:
        dataset = self._dataset(data.validation, data, sampling_rate, training=False)
        count = len(dataset) if data.validation_max_clips is None else min(len(dataset), data.validation_max_clips)
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        # Every process runs the same number of batches (FSDP needs each forward on all); the repeats are dropped.
        per_process = math.ceil(count / processes)
        indices = [rank + processes * index for index in range(per_process)]
        self.validation_counted = [index < count for index in indices]
        indices = [index % count for index in indices]
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, indices),
            batch_size=data.validation_batch_size,
            num_workers=min(data.num_workers, 2),
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.config.training.seed),  # validation leaves the RNG alone
        )

    def _eval_metrics(self, sections: dict, sampling_rate: int) -> dict:
        device, metrics = self.accelerator.device, {}
        if "stft" in sections:
            metrics["stft"] = _from_section(MultiResolutionSTFTLoss, "eval_loss_configs.stft", **sections["stft"]).to(
                device
            )
        if "mel" in sections:
            metrics["mel"] = _from_section(
                MultiResolutionMelLoss, "eval_loss_configs.mel", sampling_rate, **sections["mel"]
            ).to(device)
        for name in ("sisdr", "per"):
            if name in sections:
                if sections[name]:
                    raise ConfigError(f"`training.eval_loss_configs.{name}` takes no options, got {sections[name]!r}.")
                metrics[name] = None
        return metrics

    # --- the loop -------------------------------------------------------------------------------------------

    def _discriminator_turn(self, step: int) -> bool:
        if self.discriminator is None or step % 2 == 0:
            return False
        return self.disc_section.get("warmup_mode", "adv") == "adv" or self._discriminator_warmed_up(step)

    def _discriminator_warmed_up(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_section.get("warmup_steps", 0)

    def _train_batches(self):
        progress, accelerator = self.progress, self.accelerator
        while True:
            self.train_loader.set_epoch(progress.epoch)
            loader = self.train_loader
            if progress.batches_in_epoch:
                loader = accelerator.skip_first_batches(self.train_loader, progress.batches_in_epoch)
                loader.set_epoch(progress.epoch)
            for batch in loader:
                progress.batches_in_epoch += 1
                for reason, _ in batch["skipped"]:
                    self.skipped[SKIP_REASONS.index(reason)] += 1
                if batch["skipped"]:
                    self.last_skip_example = batch["skipped"][-1][1]
                yield batch
            progress.epoch += 1
            progress.batches_in_epoch = 0

    def _generator_terms(self, batch: dict) -> dict:
        reals = batch["audio"]
        output, logits = self.model(reals, padding_mask=batch["padding_mask"])
        fakes = output.audio_values.float()
        values = {}
        if self.mrstft is not None:
            values["mrstft_loss"] = self.mrstft(fakes, reals)
        if self.mrmel is not None:
            values["mrmel_loss"] = self.mrmel(fakes, reals)
        values["l1_time_loss"] = F.l1_loss(fakes, reals)
        values["l2_time_loss"] = F.mse_loss(fakes, reals)
        if logits is not None:
            frames = output.audio_codes_mask.sum(dim=-1)
            values["ctc_loss"] = ctc_loss(logits, frames, batch["phonemes"], BLANK_INDEX)
        if self._discriminator_warmed_up(self.progress.step):
            outputs = self.discriminator(torch.cat([reals, fakes.to(reals.dtype)]))
            values["loss_adv"], values["feature_matching_loss"] = generator_adversarial_losses(outputs, len(reals))
        self._latent_std = output.latents.detach().float().std()
        return values

    def _weighted_total(self, values: dict) -> tuple[torch.Tensor, dict]:
        total, logged = 0.0, {}
        for name, weight, decay in self.terms:
            if name in values:
                total = total + weight * decay**self.progress.generator_steps * values[name]
                logged[name] = values[name]
        return total, logged

    def _check_finite(self, values: dict) -> None:
        """Stops every process together, before any weight changes, when a loss is not finite."""
        finite = torch.stack([torch.isfinite(value.detach().float()) for value in values.values()])
        bad = self.accelerator.reduce((~finite).float(), reduction="sum")
        if bool(bad.any()):
            names = [name for name, flag in zip(values, bad.tolist()) if flag]
            last = self.last_checkpoint()
            raise NonFiniteLossError(
                f"Non-finite loss at step {self.progress.step} ({', '.join(names)}): training stopped before the "
                f"optimizer step and saved nothing. The last good checkpoint is "
                f"{last if last is not None else 'none (no checkpoint was saved yet)'}; lower the learning rate, "
                "enable clip_grad_norm or check the data, then resume from it."
            )

    def _generator_micro_step(self, batch: dict) -> dict:
        values = self._generator_terms(batch)
        total, logged = self._weighted_total(values)
        logged["loss"] = total
        self._check_finite(logged)
        self._backward_and_step(total, self.model, self.gen_optimizer, self.gen_scheduler)
        if self.discriminator is not None:
            self.disc_optimizer.zero_grad(set_to_none=True)  # what the adversarial terms left in the discriminator
        logged["latent_std"] = self._latent_std
        return logged

    def _discriminator_micro_step(self, batch: dict) -> dict:
        reals = batch["audio"]
        with torch.no_grad():
            output, _ = self.model(reals, padding_mask=batch["padding_mask"])
        outputs = self.discriminator(torch.cat([reals, output.audio_values.detach().to(reals.dtype)]))
        loss = discriminator_hinge_loss(outputs, len(reals))
        logged = {"discriminator_loss": loss}
        self._check_finite(logged)
        self._backward_and_step(loss, self.discriminator, self.disc_optimizer, self.disc_scheduler)
        return logged

    def _backward_and_step(self, loss, module, optimizer, scheduler) -> None:
        """Backward; at the last micro-batch of a step (Accelerate's `sync_gradients`) clip, step, schedule."""
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and self.config.training.clip_grad_norm > 0:
            self.accelerator.clip_grad_norm_(module.parameters(), self.config.training.clip_grad_norm)
        optimizer.step()  # Accelerate's optimizer skips the step and the zeroing between accumulated micro-batches
        if self.accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def train(self) -> dict:
        """Runs until `max_steps` or `max_minutes`; checkpoints, validates and logs on the way and at the end.
        Returns the last validation metrics (empty without validation data)."""
        training, accelerator, progress = self.config.training, self.accelerator, self.progress
        accelerator.init_trackers("stable-codec", config=_flat_hyperparameters(self.config.to_dict()))
        if training.validate_at_start and progress.step == 0 and self.validation_loader is not None:
            self.validate()
        batches = self._train_batches()
        models = [self.model] + ([self.discriminator] if self.discriminator is not None else [])
        sums, counts = {}, {}
        bar = tqdm(
            total=training.max_steps, initial=progress.step, disable=not accelerator.is_main_process, desc="training"
        )
        started = last_log_time = time.monotonic()
        samples_since_log = 0
        per_step_samples = training.batch_size * training.gradient_accumulation_steps * accelerator.num_processes
        while progress.step < training.max_steps:
            discriminator_turn = self._discriminator_turn(progress.step)
            for _ in range(training.gradient_accumulation_steps):
                batch = next(batches)
                with accelerator.accumulate(*models):
                    step_values = (
                        self._discriminator_micro_step(batch)
                        if discriminator_turn
                        else self._generator_micro_step(batch)
                    )
                for name, value in step_values.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float()
                    counts[name] = counts.get(name, 0) + 1
            if not discriminator_turn:
                progress.generator_steps += 1
                if self.ema is not None:
                    self.ema.update()
            progress.step += 1
            samples_since_log += per_step_samples
            bar.update(1)

            out_of_time = training.max_minutes is not None and time.monotonic() - started > 60 * training.max_minutes
            if accelerator.num_processes > 1:  # every process stops at the same step
                out_of_time = bool(
                    accelerator.reduce(torch.tensor(float(out_of_time), device=accelerator.device), "max")
                )
            finished = out_of_time or progress.step >= training.max_steps
            if progress.step % training.log_every == 0 or finished:
                now = time.monotonic()
                metrics = {f"train/{name}": value / counts[name] for name, value in sums.items()}
                metrics = {name: float(value) for name, value in accelerator.reduce(metrics, reduction="mean").items()}
                metrics["train/samples_per_second"] = samples_since_log / max(now - last_log_time, 1e-9)
                metrics["train/gen_lr"] = self.gen_scheduler.get_last_lr()[0]
                metrics["data/skipped_clips"] = float(self._count_skips())
                self._log(metrics)
                bar.set_postfix(
                    {key.split("/")[-1]: f"{value:.3g}" for key, value in metrics.items() if "loss" in key}
                )
                sums, counts, samples_since_log, last_log_time = {}, {}, 0, now
            if self.validation_loader is not None and (progress.step % training.validate_every == 0 or finished):
                self.validate()
            if progress.step % training.checkpoint_every == 0 or finished:
                self.save_checkpoint()
            if out_of_time:
                logger.info(f"Stopping at step {progress.step}: the {training.max_minutes}-minute budget is spent.")
                break
        bar.close()
        return self.validation_history[-1] if self.validation_history else {}

    def _count_skips(self) -> int:
        """Clips skipped so far by all processes; warns (once per new batch of skips) with the reasons."""
        counts = self.accelerator.reduce(torch.tensor(self.skipped, device=self.accelerator.device), "sum")
        total = int(counts.sum())
        if total > self.skips_reported:
            summary = ", ".join(
                f"{reason}: {int(count)}" for reason, count in zip(SKIP_REASONS, counts.tolist()) if count
            )
            logger.warning(
                f"Skipped {total} unusable clip(s) so far ({summary}); e.g. {getattr(self, 'last_skip_example', '?')}",
                main_process_only=True,
            )
            self.skips_reported = total
        return total

    def _log(self, metrics: dict) -> None:
        self.accelerator.log(metrics, step=self.progress.step)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "metrics.jsonl", "a") as file:
                file.write(json.dumps({"step": self.progress.step, **metrics}) + "\n")

    # --- validation -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict:
        """Metrics of the EMA weights (the live ones without EMA) on the validation clips, whole, over all
        processes: `per` (phone error rate of greedy CTC decoding), `stft`, `mel`, `sisdr`, and the `ctc_loss`."""
        accelerator = self.accelerator
        sums = torch.zeros(
            6, dtype=torch.float64, device=accelerator.device
        )  # per errors, phonemes, stft, mel, sisdr, clips
        ctc_sum = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        self.model.eval()
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            position = 0
            for batch in self.validation_loader:
                counted = self.validation_counted[position : position + len(batch["audio"])]
                position += len(batch["audio"])
                audio = batch["audio"].to(accelerator.device)
                mask = batch["padding_mask"].to(accelerator.device)
                with accelerator.autocast():
                    output, logits = self.model(audio, padding_mask=mask)
                frames = output.audio_codes_mask.sum(dim=-1)
                predictions = greedy_ctc_decode(logits.float(), frames, BLANK_INDEX) if logits is not None else None
                for row, keep in enumerate(counted):
                    if not keep:
                        continue
                    length = int(mask[row].sum())
                    real, fake = (
                        audio[row : row + 1, :, :length],
                        output.audio_values[row : row + 1, :, :length].float(),
                    )
                    if "stft" in self.eval_metrics:
                        sums[2] += float(self.eval_metrics["stft"](fake, real))
                    if "mel" in self.eval_metrics:
                        sums[3] += float(self.eval_metrics["mel"](fake, real))
                    if "sisdr" in self.eval_metrics:
                        sums[4] += float(scale_invariant_sdr(fake, real))
                    sums[5] += 1
                    if predictions is not None:
                        target = batch["phonemes"][row].tolist()
                        errors, total = phone_errors([predictions[row]], [target])
                        sums[0] += errors
                        sums[1] += total
                        loss = ctc_loss(
                            logits[row : row + 1, : int(frames[row])],
                            frames[row : row + 1],
                            [batch["phonemes"][row]],
                            BLANK_INDEX,
                        )
                        ctc_sum += torch.tensor([float(loss), 1.0], dtype=torch.float64, device=accelerator.device)
        self.model.train()
        sums = accelerator.reduce(sums, reduction="sum")
        ctc_sum = accelerator.reduce(ctc_sum, reduction="sum")
        clips = max(float(sums[5]), 1.0)
        results = {}
        if "per" in self.eval_metrics:
            results["val/per"] = float(sums[0] / max(float(sums[1]), 1.0))
        for index, name in ((2, "stft"), (3, "mel"), (4, "sisdr")):
            if name in self.eval_metrics:
                results[f"val/{name}"] = float(sums[index]) / clips
        if float(ctc_sum[1]) > 0:
            results["val/ctc_loss"] = float(ctc_sum[0] / ctc_sum[1])
        self._log(results)
        self.validation_history.append({"step": self.progress.step, **results})
        return results

    # --- checkpoints and export -----------------------------------------------------------------------------

    def checkpoints(self) -> list[pathlib.Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(path for path in self.checkpoint_dir.iterdir() if path.name.startswith(CHECKPOINT_PREFIX))

    def last_checkpoint(self) -> pathlib.Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self) -> pathlib.Path:
        """`accelerator.save_state` (weights, optimizers, schedulers, scaler, RNG states, progress) plus each
        process's own state (its EMA shard, its skip counts), written under a temporary name and renamed once
        complete."""
        accelerator = self.accelerator
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.progress.step:08d}"
        partial = self.checkpoint_dir / f".partial_{self.progress.step:08d}"
        if accelerator.is_main_process and partial.exists():
            shutil.rmtree(partial)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        own = {"ema": self.ema.state_dict() if self.ema is not None else None, "skipped": self.skipped}
        torch.save(own, partial / f"process_{accelerator.process_index}.pt")
        (partial / "history.json").write_text(
            json.dumps(self.validation_history)
        ) if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            for old in self.checkpoints()[: -self.config.training.keep_checkpoints]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def resume(self, checkpoint: str | pathlib.Path = "latest") -> pathlib.Path:
        """Restores a checkpoint (`"latest"`: the newest complete one under `output_dir`)."""
        folder = self.last_checkpoint() if str(checkpoint) == "latest" else pathlib.Path(checkpoint)
        if folder is None or not folder.is_dir():
            raise FileNotFoundError(f"No checkpoint to resume from at {checkpoint if folder is None else folder}.")
        self.accelerator.load_state(str(folder))
        own = torch.load(folder / f"process_{self.accelerator.process_index}.pt", weights_only=True)
        if self.ema is not None:
            self.ema.load_state_dict(own["ema"])
        self.skipped = own["skipped"]
        history = folder / "history.json"
        self.validation_history = json.loads(history.read_text()) if history.is_file() else []
        return folder

    def export(self, folder) -> pathlib.Path:
        """Saves the EMA weights (the live ones without EMA) as a plain `StableCodecModel` (`save_pretrained`),
        the CTC head beside it, and the training configuration and validation history."""
        folder = pathlib.Path(folder)
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            state = self.accelerator.get_state_dict(self.model)
            # Copies: the tensors may be the parameters themselves, which get the live weights back on exit.
            state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in (state or {}).items()}
        if self.accelerator.is_main_process:
            codec = StableCodecModel(self.codec_config)
            codec.load_state_dict(
                {key[len("codec.") :]: value for key, value in state.items() if key.startswith("codec.")}
            )
            codec.eval().save_pretrained(folder)
            head = self.accelerator.unwrap_model(self.model).head
            if head is not None:
                exported = StableCodecCTCHead(head.latent_dim, head.width, head.num_classes)
                exported.load_state_dict(
                    {key[len("head.") :]: value for key, value in state.items() if key.startswith("head.")}
                )
                exported.save_pretrained(folder)
            (folder / "training_config.json").write_text(
                json.dumps(self.config.to_dict(), indent=2, default=str) + "\n"
            )
            (folder / "validation_history.json").write_text(json.dumps(self.validation_history, indent=2) + "\n")
        self.accelerator.wait_for_everyone()
        return folder

    def end(self) -> None:
        self.accelerator.end_training()


def _from_section(cls, path: str, *args, **kwargs):
    """Builds a loss or metric from its configuration section; wrong keyword arguments name the section."""
    try:
        return cls(*args, **kwargs)
    except TypeError as error:
        raise ConfigError(f"`training.{path}`: {error}") from None


def scale_invariant_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SI-SDR in dB of an estimate against a reference (zero-mean, optimal scaling of the reference)."""
    estimate, reference = estimate.double().flatten(), reference.double().flatten()
    estimate, reference = estimate - estimate.mean(), reference - reference.mean()
    target = (estimate @ reference) / (reference @ reference + eps) * reference
    return 10 * torch.log10((target @ target + eps) / ((estimate - target) @ (estimate - target) + eps))


def _flat_hyperparameters(values: dict, prefix: str = "") -> dict:
    """Scalars for the trackers' hyperparameter tables (TensorBoard takes no nested values)."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_hyperparameters(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


__all__ = ["ExponentialMovingAverage", "NonFiniteLossError", "StableCodecTrainer", "scale_invariant_sdr"]
