"""The packed format: a folder that is really as small as the compressed model, and checks itself.

A packed directory holds::

    manifest.json        format name + version, per-tensor encoding, sha256 and size of every file
    model.safetensors    packed integer codes (uint8), fp16 parameters, bitmasks, dense fp16/fp32 tensors
    config.json          the encoder's shape after physical removal (per-layer heads and FFN widths)
    tokenizer/           tokenizer files (xz-compressed by default)

One module per step: :mod:`.layout` (where each part of a supported encoder lives), :mod:`.weight`
(a layer's exact effective weight and its quantizer's codes), :mod:`.remove` (all-zero heads, FFN
neurons and 0-bit row groups leave the model), :mod:`.vocab` (vocabulary pruning), :mod:`.encode`
(the storage rule, shared with :mod:`compactbert.size`), :mod:`.write` (tensors, manifest entries;
the entry format is documented there), :mod:`.export` (runs them in order), :mod:`.read`
(verification and decoding; reads format versions 1 and 2).

Loading checks the manifest's format and version, then the size and sha256 of every file it lists;
a tampered, truncated or missing file or an unknown version raises
:class:`~compactbert.errors.UserError` with one line naming the problem. Only JSON and safetensors
are read: nothing is unpickled. Decoding a quantized weight asks its quantizer (rebuilt from the
spec in the manifest), so the FP32 runtime reproduces the training-time logits; nothing here
switches on a quantizer's kind.
"""

from .constants import (
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    READABLE_VERSIONS,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
)
from .export import export_packed, round_floats_to_fp16
from .layout import Layout, model_layout
from .read import PackedWeights, check_packed, load_packed_tokenizer, packed_size, read_packed, verify_packed
from .write import tokenizer_files

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "TOKENIZER_DIR",
    "export_packed",
    "read_packed",
    "verify_packed",
    "check_packed",
    "load_packed_tokenizer",
    "packed_size",
    "tokenizer_files",
    "round_floats_to_fp16",
    "PackedWeights",
    "Layout",
    "model_layout",
]
