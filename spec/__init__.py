"""The framework-free contract (numpy only): config, canonical names, checkpoints, inputs."""

from .checkpoint import check_params, load_checkpoint, save_checkpoint
from .compare import normalised_diff
from .config import PRESETS, TransformerConfig
from .inputs import check_token_array, check_tokens, to_numpy
from .loss import label_smoothed_cross_entropy
from .names import (
    ATTENTION_POINTS,
    FFN_POINTS,
    SIDES,
    attention_names,
    embedding_names,
    intermediate_shapes,
    layer_index,
    num_layers,
    param_shapes,
    sublayers,
)
from .positions import position_table, sinusoidal_positions
from .random_weights import random_params
from .training import TrainConfig, learning_rate

__all__ = [
    "ATTENTION_POINTS", "FFN_POINTS", "PRESETS", "SIDES", "TransformerConfig", "attention_names",
    "check_params", "check_token_array", "check_tokens", "embedding_names",
    "intermediate_shapes", "layer_index", "label_smoothed_cross_entropy", "normalised_diff", "load_checkpoint", "num_layers",
    "TrainConfig", "learning_rate", "param_shapes", "position_table", "random_params",
    "save_checkpoint", "sinusoidal_positions", "sublayers", "to_numpy",
]
