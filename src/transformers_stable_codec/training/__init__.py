"""Finetuning Stable Codec with the CTC phoneme head on Accelerate (see docs/training.md).

`accelerate launch -m transformers_stable_codec.training --config CONFIG.yaml`
"""

from .config import ConfigError, TrainConfig, config_from_dict, load_config
from .data import ForceAlignedAudioDataset, HFDatasetSource, ShardSource, words_in_window
from .heads import StableCodecCTCHead, StableCodecForCTCTraining
from .metrics import greedy_ctc_decode, phone_error_rate
from .phonemes import BLANK_INDEX, NUM_CTC_CLASSES, PHONEME_INVENTORY, Phonemizer
from .trainer import ExponentialMovingAverage, NonFiniteLossError, StableCodecTrainer


__all__ = [
    "BLANK_INDEX",
    "ConfigError",
    "ExponentialMovingAverage",
    "ForceAlignedAudioDataset",
    "HFDatasetSource",
    "NUM_CTC_CLASSES",
    "NonFiniteLossError",
    "PHONEME_INVENTORY",
    "Phonemizer",
    "ShardSource",
    "StableCodecCTCHead",
    "StableCodecForCTCTraining",
    "StableCodecTrainer",
    "TrainConfig",
    "config_from_dict",
    "greedy_ctc_decode",
    "load_config",
    "phone_error_rate",
    "words_in_window",
]
