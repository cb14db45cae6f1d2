"""The ONNX backend: exported once and cached with a checksum; vectors match torch (real model: slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.files import sha256_file
from rag.index import embed_onnx
from rag.index.embed_onnx import onnx_model_path


@pytest.fixture
def fake_export(monkeypatch, tmp_path):
    """A model directory, and an exporter/quantiser that write small files and count their calls."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights v1")
    calls = {"export": 0, "quantize": 0}

    def export(model_dir: Path, out: Path) -> None:
        calls["export"] += 1
        out.write_bytes(b"onnx graph of " + (model_dir / "model.safetensors").read_bytes())

    def quantize(fp32: Path, out: Path) -> None:
        calls["quantize"] += 1
        out.write_bytes(b"int8 " + fp32.read_bytes())

    monkeypatch.setattr(embed_onnx, "_export", export)
    monkeypatch.setattr(embed_onnx, "_quantize", quantize)
    return model, tmp_path / "cache", calls


def test_export_happens_once_and_is_cached_with_a_checksum(fake_export):
    model, cache, calls = fake_export
    first = onnx_model_path(model, "m", "onnx", cache)
    assert first.read_bytes() == b"onnx graph of weights v1"
    assert first.with_suffix(".sha256").read_text().strip() == sha256_file(first)
    assert onnx_model_path(model, "m", "onnx", cache) == first and calls["export"] == 1
    int8 = onnx_model_path(model, "m", "onnx-int8", cache)
    assert int8.read_bytes() == b"int8 onnx graph of weights v1" and calls == {"export": 1, "quantize": 1}
    assert not list(first.parent.glob(".*tmp*"))  # no temporary files left


def test_a_damaged_export_is_made_again(fake_export):
    model, cache, calls = fake_export
    path = onnx_model_path(model, "m", "onnx", cache)
    path.write_bytes(b"truncated")
    assert onnx_model_path(model, "m", "onnx", cache).read_bytes() == b"onnx graph of weights v1"
    assert calls["export"] == 2


def test_new_weights_mean_a_new_export(fake_export):
    model, cache, calls = fake_export
    a = onnx_model_path(model, "m", "onnx", cache)
    (model / "model.safetensors").write_bytes(b"weights v2")
    b = onnx_model_path(model, "m", "onnx", cache)
    assert a != b and b.read_bytes() == b"onnx graph of weights v2" and calls["export"] == 2


@pytest.mark.slow
def test_onnx_vectors_match_torch(tmp_path):
    from rag.index.embed import SentenceTransformerEmbedder, model_dir
    from rag.index.embed_onnx import OnnxEmbedder

    texts = ["State space models for long sequences.", "Sourdough", "We measure how wild yeast and lactic acid "
             "bacteria interact during sourdough fermentation. " * 6, "Late interaction retrieval.", ""]
    ref = SentenceTransformerEmbedder().encode(texts)
    fp32 = OnnxEmbedder(model_dir("all-MiniLM-L6-v2"), "all-MiniLM-L6-v2", "onnx", tmp_path)
    got = fp32.encode(texts)  # input order kept although batches are sorted by length
    assert got.shape == ref.shape and fp32.dim == 384
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # several batches of BATCH_SIZE, sorted by length, come back in input order
    many = [f"{t} number {i}" for i in range(3) for t in texts]
    np.testing.assert_allclose(fp32.encode(many), SentenceTransformerEmbedder().encode(many), atol=1e-4)
    int8 = OnnxEmbedder(model_dir("all-MiniLM-L6-v2"), "all-MiniLM-L6-v2", "onnx-int8", tmp_path)
    assert np.min(np.sum(int8.encode(texts) * ref, axis=1)) > 0.95


@pytest.mark.slow
def test_the_exported_graph_is_fused(tmp_path):
    """What makes it fast: one Attention node per layer, fused layer norms and GELUs."""
    import onnx

    from rag.index.embed import model_dir

    path = onnx_model_path(model_dir("all-MiniLM-L6-v2"), "all-MiniLM-L6-v2", "onnx", tmp_path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Attention") == 6 and ops.count("SkipLayerNormalization") == 12
    assert ops.count("BiasGelu") == 6 and ops.count("EmbedLayerNormalization") == 1
    assert not (set(ops) & {"Softmax", "Erf"})  # nothing left unfused
