"""A frozen Hugging Face model run by ONNX Runtime on the CPU (``hardware.backend=onnx``).

On a CPU, ONNX Runtime runs the same fp32 encoder up to 1.5× faster than PyTorch eager end to end
(fused attention, LayerNorm and GELU kernels; docs/BENCHMARKS.md), with the same outputs to ~1e-5.
Teachers (bi-encoder, cross-encoder) and the dense mining encoder swap their backbone for an
:class:`OnnxBackbone` when they load under ``hardware.backend=onnx``; the rest of their code — tokenisation, length sorting, pooling, the
forward cap — is unchanged, because the backbone keeps the call signature and returns the same
attribute (``last_hidden_state`` or ``logits``).

The model is exported once with ``torch.onnx.export(..., dynamo=True)`` (the TorchScript exporter
mis-traces transformers 5's BERT) with dynamic batch and sequence axes, then, for
``hardware.precision=int8``, quantized by ONNX Runtime's dynamic int8 quantization (weights per
channel, activations per batch). The files are cached under ``$DISTILLRANK_ONNX_CACHE`` (default
``~/.cache/distillrank/onnx``), named by a fingerprint of the weights, config, output, precision and
exporter version; each is written to a temporary name and renamed, so a half-written graph is never
loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from distillrank.runtime import ONNX_PACKAGES as REQUIRED  # noqa: F401 - re-exported
from distillrank.runtime import missing_onnx_packages as missing_packages  # noqa: F401 - re-exported
from distillrank.runtime import require_onnx as require
from distillrank.workspace import atomic_rename, cache_entry, seal

log = logging.getLogger(__name__)

CACHE_ENV = "DISTILLRANK_ONNX_CACHE"
EXPORT_VERSION = 1  # bump when the exported graph changes for the same weights
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # in _Export.forward's order
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")  # quiet below ERROR while exporting


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$DISTILLRANK_ONNX_CACHE`` or ``~/.cache/distillrank/onnx``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return base / "distillrank" / "onnx"


def model_fingerprint(model: nn.Module, output: str, int8: bool) -> str:
    """sha256 of what decides the exported graph: weights, config, output, precision, exporter."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update((config.to_json_string() if config is not None else type(model).__name__).encode())
    digest.update(f"{output}|int8={int8}|v{EXPORT_VERSION}|torch {torch.__version__}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _input_names(model: nn.Module) -> list[str]:
    accepted = inspect.signature(model.forward).parameters
    return [name for name in INPUTS if name in accepted]


class _Export(nn.Module):
    """The model as a function of its token tensors, returning one output tensor."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask, **extra), self.output)


def _export(model: nn.Module, names: list[str], output: str, path: Path) -> None:
    ids = torch.full((2, 8), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # one padded row: the graph must keep the masked path
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # the exporter's notes (optional torchvision ops, ~100 INFO lines of onnxscript's and onnx_ir's
    # graph passes: "Replaced initializer …") are not the user's business; errors still show
    quiet = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [log_.level for log_ in quiet]
    for log_ in quiet:
        log_.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Export(model.eval(), output),
                tuple(example[n] for n in names),
                str(path),
                input_names=names,
                output_names=[output],
                dynamic_shapes=tuple({0: batch, 1: sequence} for _ in names),
                dynamo=True,
                verbose=False,
            )
    finally:
        for log_, level in zip(quiet, levels, strict=True):
            log_.setLevel(level)


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8)


def exported(model: nn.Module, output: str, int8: bool = False, cache: Path | None = None) -> Path:
    """The ONNX file of ``model`` (exported, and quantized for int8, on the first call; cached)."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = model_fingerprint(model, output, int8)[:24]
    path = cache / f"{key}.onnx"
    # locked while checked and exported; a graph that does not match its checksums is exported again
    with cache_entry(path, "ONNX graph") as present:
        if present:
            return path
        # int8 quantizes the cached fp32 graph (exported first when absent): one export per model,
        # the slowest step (hardware=auto's calibration measures both)
        source = exported(model, output, False, cache) if int8 else None
        with tempfile.TemporaryDirectory(dir=cache, prefix=".export-") as tmp:
            final = Path(tmp) / "model.onnx"
            if source is not None:
                log.info("quantizing the ONNX graph of %s to int8 (%s)", type(model).__name__, output)
                _quantize(source, final)
            else:
                log.info("exporting %s to ONNX (%s, fp32)", type(model).__name__, output)
                _export(model, _input_names(model), output, final)
            _inline(final)
            atomic_rename(final, path)  # the cache only ever holds complete graphs
        seal(path)
    return path


def _inline(path: Path) -> None:
    """Fold external weight files into the graph (one self-contained file per model)."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    onnx.save_model(model, str(path), save_as_external_data=False)


class OnnxBackbone(nn.Module):
    """A drop-in for a frozen Hugging Face model: called with the tokenizer's tensors, it returns an
    object with ``output`` (``last_hidden_state`` or ``logits``), computed by ONNX Runtime on the CPU.

    It keeps the model's ``config`` and one empty parameter, so code that reads
    ``backbone.config`` or ``next(model.parameters()).device`` works unchanged.
    """

    def __init__(self, path: Path, names: list[str], output: str, config, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        # no memory pattern: with it ONNX Runtime plans every intermediate of the graph at once
        # (mining: 423 MiB peak against PyTorch's 168); without it 305 MiB, and 143-147 MiB with a
        # forward cap of 8; scoring speed is the same either way (docs/BENCHMARKS.md)
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path, self.names, self.output, self.config = path, names, output, config
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @classmethod
    def build(cls, model: nn.Module, output: str, int8: bool = False, cache: Path | None = None) -> OnnxBackbone:
        """Export ``model`` (cached) and open an ONNX Runtime session on it."""
        require()
        path = exported(model, output, int8, cache)
        return cls(path, _input_names(model), output, getattr(model, "config", None))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **inputs) -> SimpleNamespace:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, **inputs}
        if feeds["attention_mask"] is None:  # dropped when it masks nothing (models/masking.py)
            feeds["attention_mask"] = torch.ones_like(input_ids)
        if "token_type_ids" in self.names and feeds.get("token_type_ids") is None:
            feeds["token_type_ids"] = torch.zeros_like(input_ids)
        arrays = {name: np.ascontiguousarray(feeds[name].cpu().numpy(), dtype=np.int64) for name in self.names}
        (out,) = self.session.run([self.output], arrays)
        return SimpleNamespace(**{self.output: torch.from_numpy(out)})
