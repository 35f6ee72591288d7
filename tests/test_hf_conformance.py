"""transformers' own model tests, run against `TransformerLabForConditionalGeneration`.

`ModelTesterMixin` (tests/test_modeling_common.py) and `ConfigTester`
(tests/test_configuration_common.py) come from the source distribution of the *installed*
transformers version, extracted at test time into a cache folder: nothing of them is copied into
this project.  The sdist is found at `$TLAB_TRANSFORMERS_SDIST` or in
`~/.cache/transformer-lab/transformers-sdist/` (`.ci/run` downloads it there with
`pip download --no-deps --no-binary :all: transformers==<version>`); without it the module skips
and says so.

The sdist does not ship three modules that those files import relatively:
`tests/generation/test_utils.py` (`GenerationTesterMixin`), `tests/exporters/test_export.py`
(`ExportTesterMixin`) and `tests/utils/test_configuration_utils.py` (`config_common_kwargs`).
They are provided here as placeholders written at import time: the two mixins without any
test, and our own dict of `PretrainedConfig` keyword arguments.  So *generation is not covered
by transformers' GenerationTesterMixin*; the `test_generate_*` functions at the end of this file
check the real `generate()` against the mirror's own decoding instead, and `torch.export` is
tested here directly.
"""

from __future__ import annotations

import importlib
import os
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("parameterized", reason="transformers' model tests import parameterized "
                    "(the project's dev extra installs it)")

from hf_bridge import (  # noqa: E402
    TransformerLabConfig,
    TransformerLabForConditionalGeneration,
)

Model = TransformerLabForConditionalGeneration
PACKAGE = "transformers_sdist_tests"
SDIST_DIR = Path.home() / ".cache" / "transformer-lab" / "transformers-sdist"

# The placeholders for the modules the sdist lacks (see the module docstring).
PLACEHOLDERS = {
    "generation/test_utils.py": (
        '"""Placeholder: tests/generation/test_utils.py is not in the transformers sdist."""\n\n\n'
        "class GenerationTesterMixin:\n"
        '    """No tests: tests/test_hf_conformance.py checks generate() itself."""\n'),
    "exporters/test_export.py": (
        '"""Placeholder: tests/exporters/test_export.py is not in the transformers sdist."""\n\n\n'
        "class ExportTesterMixin:\n"
        '    """No tests: tests/test_hf_conformance.py runs torch.export itself."""\n'),
    # Our own choice of PretrainedConfig keyword arguments that every config must keep as given
    # (ConfigTester.check_config_arguments_init); `dtype` is checked as torch.float16.
    "utils/test_configuration_utils.py": (
        '"""Placeholder: tests/utils/test_configuration_utils.py is not in the sdist."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False, "output_hidden_states": True, "output_attentions": True,\n'
        '    "dtype": "float16", "chunk_size_feed_forward": 5, "architectures": ["Lab"],\n'
        '    "id2label": {0: "a", 1: "b"}, "label2id": {"a": 0, "b": 1},\n'
        '    "problem_type": "single_label_classification", "tokenizer_class": "Tok",\n'
        '    "prefix": "lab", "sep_token_id": 7, "task_specific_params": {"t": {"x": 1}},\n'
        "}\n"),
}


def _find_sdist(version: str) -> Path | None:
    name = f"transformers-{version}.tar.gz"
    given = os.environ.get("TLAB_TRANSFORMERS_SDIST")
    for candidate in ([Path(given)] if given else []) + [SDIST_DIR / name]:
        if candidate.is_file():
            return candidate
    return None


def _load_transformers_tests() -> tuple[object, object] | str:
    """(test_modeling_common, test_configuration_common) modules, or why they cannot be had."""
    version = transformers.__version__
    sdist = _find_sdist(version)
    if sdist is None:
        return (f"the transformers {version} sdist was not found (set TLAB_TRANSFORMERS_SDIST or "
                f"run `pip download --no-deps --no-binary :all: transformers=={version} -d "
                f"{SDIST_DIR}`)")
    root = SDIST_DIR / f"tests-{version}"
    package = root / PACKAGE
    if not (package / "test_modeling_common.py").is_file():
        prefix = f"transformers-{version}/tests/"
        wanted = ("test_modeling_common.py", "test_configuration_common.py")
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root))
        with tarfile.open(sdist) as tar:
            for name in wanted:
                member = tar.getmember(prefix + name)
                (staging / name).write_bytes(tar.extractfile(member).read())
        for rel, text in PLACEHOLDERS.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(text)
        for folder in (staging, *{(staging / rel).parent for rel in PLACEHOLDERS}):
            (folder / "__init__.py").touch()
        try:
            staging.rename(package)  # atomic: a half-extracted folder is never used
        except OSError:  # another process got there first
            pass
    sys.path.insert(0, str(root))
    return (importlib.import_module(f"{PACKAGE}.test_modeling_common"),
            importlib.import_module(f"{PACKAGE}.test_configuration_common"))


_LOADED = _load_transformers_tests()
if isinstance(_LOADED, str):
    pytest.skip(_LOADED, allow_module_level=True)
_COMMON, _CONFIG_COMMON = _LOADED
ModelTesterMixin = _COMMON.ModelTesterMixin
ConfigTester = _CONFIG_COMMON.ConfigTester
GenerationTesterMixin = importlib.import_module(f"{PACKAGE}.generation.test_utils") \
    .GenerationTesterMixin
ids_tensor = _COMMON.ids_tensor

# transformers lists its own seq2seq LMs by name; the mixin reads that list to build `labels`
# for the loss tests, so ours joins it (AutoModelForSeq2SeqLM.register does not add names)
_COMMON.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.setdefault(
    TransformerLabConfig.model_type, Model.__name__)


class TransformerLabModelTester:
    """Tiny configs and inputs in transformers' model-tester shape (cf. its Marian tester).

    Sources end with eos and hold no pad, so `attention_mask = input_ids != pad_id` (the only
    mask the model takes) is all ones; the decoder input starts with the start token.
    """

    def __init__(self, parent, batch_size=13, seq_length=7, is_training=True, vocab_size=99,
                 hidden_size=16, num_hidden_layers=2, num_attention_heads=4, d_ff=24,
                 dropout_rate=0.1, max_len=40):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.encoder_seq_length = seq_length
        self.decoder_seq_length = seq_length
        self.is_training = is_training
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.d_ff = d_ff
        self.dropout_rate = dropout_rate
        self.max_len = max_len
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    def get_config(self) -> TransformerLabConfig:
        return TransformerLabConfig(
            src_vocab_size=self.vocab_size, tgt_vocab_size=self.vocab_size,
            d_model=self.hidden_size, num_heads=self.num_attention_heads,
            num_encoder_layers=self.num_hidden_layers, num_decoder_layers=self.num_hidden_layers,
            d_ff=self.d_ff, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.dropout_rate, max_len=self.max_len,
            pad_id=self.pad_id, bos_id=self.bos_id, eos_id=self.eos_id)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(3)
        input_ids[:, -1] = self.eos_id
        decoder_input_ids = ids_tensor([self.batch_size, self.seq_length],
                                       self.vocab_size).clamp(3)
        decoder_input_ids[:, 0] = self.bos_id
        inputs = {
            "input_ids": input_ids,
            "decoder_input_ids": decoder_input_ids,
            "attention_mask": input_ids.ne(self.pad_id).long(),
            "decoder_attention_mask": decoder_input_ids.ne(self.pad_id).long(),
        }
        return self.get_config(), inputs

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()


class TransformerLabModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (Model,)
    is_encoder_decoder = True

    def setUp(self):
        self.model_tester = TransformerLabModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=TransformerLabConfig,
            src_vocab_size=99, tgt_vocab_size=99, d_model=16, num_heads=4)

    def test_config(self):
        self.config_tester.run_common_tests()
