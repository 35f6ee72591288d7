"""Test-wide settings: full float32 matmul precision on every backend, headless plotting.

Frameworks are configured only if installed, so a torch-only or jax-only environment can still
run the tests that apply to it (the others are skipped with `pytest.importorskip`).
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

try:
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
except ImportError:
    pass

try:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    # Tiny test models gain nothing from intra-op threads, and on a loaded 2-core machine the
    # thread hand-off made a small nn.Linear ~100x slower (6 ms vs 0.06 ms per call).
    torch.set_num_threads(1)
except ImportError:
    pass
