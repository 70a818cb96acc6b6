"""The CTC projection head on the pre-bottleneck latents, and the codec + head module that training optimizes."""

import json
import pathlib

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..modeling_stable_codec import StableCodecModel
from .phonemes import NUM_CTC_CLASSES


HEAD_WEIGHTS_NAME = "ctc_head.safetensors"
HEAD_CONFIG_NAME = "ctc_head_config.json"


class StableCodecCTCHead(nn.Module):
    """tanh of the latents, then an MLP (`width` wide, two ReLU hidden layers) to `num_classes` logits per frame,
    as the original finetune's projection head (81 classes: 80 phoneme symbols and the blank)."""

    def __init__(self, latent_dim: int = 6, width: int = 256, num_classes: int = NUM_CTC_CLASSES):
        super().__init__()
        self.latent_dim, self.width, self.num_classes = latent_dim, width, num_classes
        self.mlp = nn.Sequential(
            nn.Tanh(),
            nn.Linear(latent_dim, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (batch, latent_dim, frames) -> logits (batch, frames, num_classes)."""
        return self.mlp(latents.transpose(1, 2))

    def save_pretrained(self, folder) -> None:
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"latent_dim": self.latent_dim, "width": self.width, "num_classes": self.num_classes}
        (folder / HEAD_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file(
            {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()},
            folder / HEAD_WEIGHTS_NAME,
        )

    @classmethod
    def from_pretrained(cls, folder) -> "StableCodecCTCHead":
        folder = pathlib.Path(folder)
        if not (folder / HEAD_WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{folder} holds no CTC head ({HEAD_WEIGHTS_NAME}).")
        head = cls(**json.loads((folder / HEAD_CONFIG_NAME).read_text()))
        head.load_state_dict(load_file(folder / HEAD_WEIGHTS_NAME))
        return head


class StableCodecForCTCTraining(nn.Module):
    """The codec and (optionally) its CTC head as one module, so that data parallelism wraps them together.

    `forward` returns the codec's output and the head's logits (None without a head). With `detach_head`, CTC
    gradients train the head alone and leave the encoder to the reconstruction objectives.
    """

    _no_split_modules = ["StableCodecTransformerLayer"]  # FSDP wraps each transformer layer on its own

    def __init__(self, codec: StableCodecModel, head: StableCodecCTCHead | None, detach_head: bool = False):
        super().__init__()
        self.codec = codec
        self.head = head
        self.detach_head = detach_head

    def forward(self, input_values: torch.Tensor, padding_mask: torch.Tensor | None = None):
        output = self.codec(input_values, padding_mask=padding_mask)
        logits = None
        if self.head is not None:
            latents = output.latents.detach() if self.detach_head else output.latents
            logits = self.head(latents)
        return output, logits


__all__ = ["StableCodecCTCHead", "StableCodecForCTCTraining"]
