"""The embedding model on ONNX Runtime: exported once from the packaged weights, cached, verified.

sentence-transformers' own ONNX backend needs `optimum`, whose releases pin
transformers < 5 (this project runs 5.x), so the export is done here with
`torch.onnx.export` from the packaged model directory, no hub involved. The exported
graph is the whole sentence-transformers pipeline after tokenisation: BERT, mean
pooling over the attention mask, L2 normalisation; its output matches torch within
1e-6. `onnx-int8` is that graph with its weights quantised to int8 per channel
(onnxruntime's dynamic quantisation).

The graph is then fused by ONNX Runtime's transformer optimiser (`optimize_model`,
model_type "bert"): one Attention node per layer, EmbedLayerNormalization,
SkipLayerNormalization and BiasGelu. Those patterns are only recognised in what the
TorchScript exporter writes from BERT's eager attention (the dynamo exporter's graph,
or SDPA attention, fuse only the GELUs). Fused, the seed corpus embeds 1.7x faster
(bench/bench_embed.py --exports), its vectors within 2e-7 of the unfused graph's.

Files live in `<cache_dir>/onnx/<model>-<sha of the weights>/` beside a `.sha256`
marker written after the export: the file is checked against it before every load
(90 MB hash, ~0.1 s) and re-exported if it does not match. The export happens on
first use (the first `rag index` or question), never at import; concurrent
first uses each write a temporary file and rename it, so the last one wins whole.

Texts are sorted by length before batching (as sentence-transformers does), so a
batch pads to the length of similar texts, and results are returned in input order.
Batches are small (`BATCH_SIZE`, 8): on 2 cores 8 texts a run embedded the seed corpus
1.4x faster than 64 (less padding, activations that stay in cache).

Left out: GPU execution providers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from rag.errors import RagError
from rag.files import atomic_write, sha256_file

log = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the exported graph changes; part of the cache path (2: fused attention)
OPSET = 17
BATCH_SIZE = 8  # texts per ONNX Runtime run (bench/bench_embed.py --exports measures 8 against 64)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}


def onnx_model_path(model_dir: Path, name: str, backend: str, cache_dir: str | Path) -> Path:
    """The verified ONNX file of the packaged model in `model_dir` for `backend` (onnx or onnx-int8),
    exported (and quantised) into the cache first if it is missing or does not match its checksum."""
    if backend not in ONNX_FILES:
        raise RagError(f"unknown ONNX backend {backend!r}; use one of {', '.join(ONNX_FILES)}")
    weights = model_dir / "model.safetensors"
    source = sha256_file(weights)[:12] if weights.is_file() else "noweights"
    folder = Path(cache_dir) / "onnx" / f"{name}-{source}-v{EXPORT_VERSION}"
    target = folder / ONNX_FILES[backend]
    if _verified(target):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RagError(f"cannot create the ONNX cache {folder}: {e.strerror}; set RAG_CACHE_DIR to a writable "
                       f"directory") from None
    if backend == "onnx-int8":
        fp32 = onnx_model_path(model_dir, name, "onnx", cache_dir)
        _publish(target, lambda tmp: _quantize(fp32, tmp))
    else:
        _publish(target, lambda tmp: _export(model_dir, tmp))
    return target


def _verified(path: Path) -> bool:
    marker = path.with_suffix(".sha256")
    if not (path.is_file() and marker.is_file()):
        return False
    if sha256_file(path) == marker.read_text().strip():
        return True
    log.warning("%s does not match its checksum; exporting it again", path)
    return False


def _publish(target: Path, make) -> None:
    """Write `target` through `make(tmp)` into a temporary name, checksum it, rename it into place."""
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.onnx")
    try:
        make(tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, target)
        atomic_write(target.with_suffix(".sha256"), digest + "\n")
    except OSError as e:
        raise RagError(f"cannot write {target}: {e.strerror}; free disk space or set RAG_CACHE_DIR") from None
    finally:
        tmp.unlink(missing_ok=True)


def _export(model_dir: Path, out: Path) -> None:
    """torch -> ONNX: BERT + mean pooling + normalisation, dynamic batch and sequence axes, then fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    raw = out.with_name(out.stem + ".unfused.onnx")
    try:
        config = _export_graph(model_dir, raw, fusable=True)
        log.info("fusing the ONNX graph (attention, layer norms, GELU)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fused = optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size)
        fused.save_model_to_file(str(out))
    finally:
        raw.unlink(missing_ok=True)


def _export_graph(model_dir: Path, out: Path, *, fusable: bool):
    """The unfused graph: with `fusable`, the TorchScript exporter over eager attention (the patterns the
    optimiser fuses); without, the dynamo exporter over SDPA (the graph of EXPORT_VERSION 1, kept for
    bench/bench_embed.py's comparison). Returns the model's config."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    log.info("exporting %s to ONNX (once; about half a minute)", model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar: noise in the middle of `rag index`
    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True,
                                          attn_implementation="eager" if fusable else "sdpa").eval()
    finally:
        hf_logging.enable_progress_bar()

    class Pooled(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    sample = tokenizer(["a short text", "a somewhat longer text to give the batch some padding"],
                       padding=True, return_tensors="pt")
    args = tuple(sample[k] for k in INPUTS)
    # The exporter reports progress with print() and warns about operators this model does not use;
    # keep stdout for the command's own output, and stderr for what matters.
    stdout, sys.stdout = sys.stdout, sys.stderr
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fusable:
                axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS} | {OUTPUT: {0: "batch"}}
                torch.onnx.export(Pooled(model).eval(), args, str(out), dynamo=False, opset_version=OPSET,
                                  input_names=list(INPUTS), output_names=[OUTPUT], dynamic_axes=axes)
            else:
                batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                torch.onnx.export(Pooled(model).eval(), args, str(out), dynamo=True, external_data=False,
                                  opset_version=18, input_names=list(INPUTS), output_names=[OUTPUT],
                                  dynamic_shapes={k: {0: batch, 1: seq} for k in INPUTS}, verbose=False)
    finally:
        sys.stdout = stdout
        exporter_log.setLevel(level)
    return model.config


def _quantize(fp32: Path, out: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime's "consider pre-processing" advice
    # Shape inference cannot type the outputs of the fused (com.microsoft) operators: they are float.
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})


class OnnxEmbedder:
    """The packaged model on ONNX Runtime (CPU); the `Embedder` interface of rag/index/embed.py."""

    def __init__(self, model_dir: Path, name: str, backend: str, cache_dir: str | Path,
                 batch_size: int = BATCH_SIZE) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = onnx_model_path(model_dir, name, backend, cache_dir)
        options = ort.SessionOptions()
        # Ray sets OMP_NUM_THREADS to an actor's CPUs; ONNX Runtime would otherwise use every core.
        threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=int(config.get("max_seq_length", 256)))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.name = name
        self.batch_size = batch_size
        self.path = path
        self.dim = 0
        self.dim = int(self.encode(["dimension probe"]).shape[1])

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32) if self.dim else None
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first, like sentence-transformers
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), unit="text", desc="Embedding", file=sys.stderr)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            enc = self.tokenizer.encode_batch([texts[i] for i in rows])
            feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
            vecs = self.session.run([OUTPUT], feed)[0]
            if out is None:
                out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
            out[rows] = vecs
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        return out if out is not None else np.empty((0, self.dim), dtype=np.float32)
