"""The VLM review client against a scripted chat-completions server on 127.0.0.1, and the local
``transformers`` backend with a tiny random LLaVA built here (nothing is downloaded)."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import video_fixtures as vf
from tests.chat_server import API_KEY, GOOD, KEY_ENV, Reply, clip
from viva_pipelines.config.schema import JudgeSettings, VlmSettings
from viva_pipelines.defs.resources import vlm_backend
from viva_pipelines.storage import Storage
from viva_pipelines.vlm import (
    ChatCompletionsClient,
    DirectoryStore,
    PairVerdict,
    RateLimiter,
    RetryPolicy,
    VlmError,
    parse_json_reply,
    parse_verdict,
    review_pair,
    sample_frames,
)
from viva_pipelines.vlm.base import cache_key
from viva_pipelines.vlm.client import parse_retry_after
from viva_pipelines.vlm.messages import decode_image_url, image_part
from viva_pipelines.vlm.review import VERDICT_SCHEMA


def review(client: Any, source: np.ndarray | None = None, **kwargs: Any) -> PairVerdict:
    source = clip(0) if source is None else source
    return review_pair(client, source, clip(1), "Remove the ball", "remove", **kwargs)


def ask(client: ChatCompletionsClient, text: str = "hello") -> dict[str, Any]:
    return client.complete_json([{"role": "user", "content": text}], lambda data: data)


# -- protocol and answers ------------------------------------------------------------------------
def test_review_pair_sends_sampled_frames_and_returns_the_verdict(server, make_client):
    source, target = clip(0), clip(1)
    verdict = review_pair(make_client(), source, target, "Remove the ball", "remove", max_frames=4)
    assert verdict == PairVerdict(True, 8.0, "Remove the red ball", "Clean removal.")

    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    body = request.body
    assert body["model"] == "test-vlm"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "pair_review", "schema": VERDICT_SCHEMA},
    }
    assert body["temperature"] == 0.0
    parts = body["messages"][0]["content"]
    images = [decode_image_url(p["image_url"]["url"]) for p in parts if p["type"] == "image_url"]
    expected = [*sample_frames(source, 4), *sample_frames(target, 4)]
    assert len(images) == 8
    for image, frame in zip(images, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(image), frame)  # PNG is lossless
    text = " ".join(p["text"] for p in parts if p["type"] == "text")
    assert '"Remove the ball"' in text and "Edit type: remove" in text
    assert "$" not in text and "<!--" not in text


@pytest.mark.parametrize("settings", [VlmSettings, JudgeSettings])
def test_the_configured_answer_cap_reaches_the_endpoint(server, monkeypatch, tmp_path, settings):
    """qc.vlm / benchmark.judge max_new_tokens is the request's max_tokens (OpenAI's cap)."""
    monkeypatch.setenv(KEY_ENV, API_KEY)
    vlm = settings(
        enabled=True,
        base_url=server.base_url,
        model="test-vlm",
        api_key_env=KEY_ENV,
        max_new_tokens=77,
    )
    review_pair(vlm_backend(vlm, Storage(str(tmp_path))), clip(0), clip(1), "Remove it", "remove")
    (request,) = server.requests
    assert request.body["max_tokens"] == 77


def test_malformed_json_then_valid_answer_uses_one_corrective_retry(server, make_client):
    server.script = [
        Reply('{"keep": true, "score": 8,'),
        Reply(f"```json\n{json.dumps(GOOD)}\n```"),
    ]
    assert review(make_client()).instruction == "Remove the red ball"
    first, second = server.requests
    followup = second.body["messages"]
    assert followup[:-2] == first.body["messages"]
    assert followup[-2] == {"role": "assistant", "content": '{"keep": true, "score": 8,'}
    assert followup[-1]["role"] == "user" and "not valid JSON" in followup[-1]["content"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({**GOOD, "score": 11}, "score must be between 0 and 10"),
        ({k: v for k, v in GOOD.items() if k != "reason"}, "missing: reason"),
        ({**GOOD, "keep": "yes"}, "keep must be true or false"),
        ({**GOOD, "confidence": 0.9}, "unexpected: confidence"),
    ],
)
def test_invalid_answer_twice_is_a_clear_error(server, make_client, answer, reason):
    server.script = [Reply(json.dumps(answer))]
    with pytest.raises(VlmError, match="after one corrective retry") as error:
        review(make_client())
    assert reason in str(error.value) and server.base_url in str(error.value)
    assert len(server.requests) == 2
    assert reason in server.requests[1].body["messages"][-1]["content"]  # the model was told


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({**GOOD, "score": -0.5}, "between 0 and 10"),
        ({**GOOD, "score": True}, "score must be a number"),
        ({**GOOD, "score": float("nan")}, "between 0 and 10"),
        ({**GOOD, "instruction": "  "}, "must not be empty when keep is true"),
        ({**GOOD, "instruction": None}, "instruction must be a string"),
        ({**GOOD, "reason": ""}, "reason must be a non-empty string"),
        ({}, "missing: keep, score, instruction, reason"),
    ],
)
def test_verdict_validation_is_strict(answer, problem):
    with pytest.raises(ValueError, match=problem):
        parse_verdict(answer)


def test_verdict_may_reject_without_instruction():
    verdict = parse_verdict({"keep": False, "score": 1.5, "instruction": "", "reason": " Ghost. "})
    assert verdict == PairVerdict(False, 1.5, "", "Ghost.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('  ```json\n{"a": 1}\n```  ', {"a": 1}),
        ('```\n{"a": 1}```', {"a": 1}),
    ],
)
def test_json_replies_may_be_fenced(text, expected):
    assert parse_json_reply(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "empty"), ("[1, 2]", "JSON object"), ("Sure! {}", "not valid JSON")],
)
def test_unusable_replies_are_explained(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_json_reply(text)


# -- transport robustness ------------------------------------------------------------------------
def test_429_waits_for_retry_after_then_succeeds(server, make_client):
    server.script = [
        Reply(status=429, body="{}", headers={"Retry-After": "1"}),
        Reply(json.dumps(GOOD)),
    ]
    started = time.monotonic()
    assert review(make_client()).keep
    assert 0.95 <= time.monotonic() - started < 3
    assert len(server.requests) == 2


def test_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 < parse_retry_after({"retry-after": format_datetime(later, usegmt=True)}) <= 30
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_grows_is_jittered_and_capped():
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=5.0, jitter=0.5)
    delays = [policy.delay(attempt) for attempt in (1, 2, 3, 4, 5)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and 2 <= delays[2] <= 4
    assert all(d <= 5 for d in delays)
    assert policy.delay(1, retry_after=3.0) == 3.0
    assert policy.delay(1, retry_after=60.0) == 5.0


def test_5xx_forever_fails_after_bounded_attempts(server, make_client):
    server.script = [Reply(status=500, body='{"error": "overloaded"}')]
    started = time.monotonic()
    with pytest.raises(VlmError) as error:
        review(make_client())
    assert time.monotonic() - started < 2
    assert len(server.requests) == 3
    message = str(error.value)
    assert f"{server.base_url}/chat/completions" in message
    assert "after 3 attempt(s)" in message and "HTTP 500" in message and "overloaded" in message


def test_other_4xx_is_not_retried(server, make_client):
    server.script = [Reply(status=400, body='{"error": {"message": "model not found"}}')]
    with pytest.raises(VlmError, match=r"rejected \(not retried\): HTTP 400.*model not found"):
        review(make_client())
    assert len(server.requests) == 1


def test_timeouts_are_retried(server, make_client):
    server.script = [Reply(json.dumps(GOOD), delay_s=1.0), Reply(json.dumps(GOOD))]
    assert review(make_client(timeout_s=0.2)).keep
    assert len(server.requests) == 2


def test_connection_errors_are_retried_then_reported(monkeypatch):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client = ChatCompletionsClient(
        f"http://127.0.0.1:{port}/v1",
        "test-vlm",
        api_key_env=None,
        retry=RetryPolicy(max_attempts=2, backoff_s=0.01),
    )
    with pytest.raises(VlmError, match=rf"127.0.0.1:{port}/v1/chat/completions failed after 2"):
        ask(client)


def test_rate_limit_spaces_requests(server, make_client):
    client = make_client(rate_limit_per_s=20.0)
    started = time.monotonic()
    for index in range(5):
        ask(client, f"call {index}")
    assert time.monotonic() - started >= 4 / 20 - 0.005  # float slack, not scheduling slack
    assert len(server.requests) == 5


def test_rate_limiter_is_shared_fairly_across_threads():
    limiter = RateLimiter(rate_per_s=30.0)
    started = time.monotonic()
    workers = [
        threading.Thread(target=lambda: [limiter.acquire() for _ in range(3)]) for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert time.monotonic() - started >= 8 / 30 - 0.005


# -- the answer cache ----------------------------------------------------------------------------
def test_identical_calls_hit_the_cache_and_new_images_do_not(server, make_client, tmp_path):
    store = DirectoryStore(tmp_path / "cache")
    client = make_client(cache=store)
    assert review(client).keep
    assert review(client).keep
    assert len(server.requests) == 1
    changed = clip(0)
    changed[-1, 0, 0, 0] ^= 1  # one pixel of the last (always sampled) frame
    assert review(client, changed).keep
    assert len(server.requests) == 2
    entries = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(entries) == 2 and all(json.loads(p.read_bytes()) == GOOD for p in entries)


def test_only_validated_answers_are_cached(server, make_client, tmp_path):
    server.script = [Reply('{"keep": 1}')]
    client = make_client(cache=tmp_path / "cache")
    with pytest.raises(VlmError):
        review(client)
    assert not (tmp_path / "cache").exists()
    server.script = [Reply("not json"), Reply(json.dumps(GOOD))]
    assert review(client).keep
    assert review(client).keep  # the corrected answer was cached under the original request
    assert len(server.requests) == 4


def test_storage_is_a_cache_and_stale_entries_are_asked_again(server, make_client, tmp_path):
    storage = Storage(str(tmp_path / "root"))
    assert review(make_client(cache=storage)).keep
    (key,) = storage.list("vlm_cache")
    assert review(make_client(cache=storage)).keep  # a new client, the same storage
    assert len(server.requests) == 1
    storage.write_bytes(key, b'{"keep": true}')  # e.g. written before the validator got stricter
    assert review(make_client(cache=storage)).keep
    assert len(server.requests) == 2
    assert json.loads(storage.read_bytes(key)) == GOOD


def test_cache_key_covers_model_params_and_image_bytes():
    frame = clip(0)[0]
    messages = [{"role": "user", "content": [image_part(frame)]}]
    base = cache_key("m", messages, {"t": 0})
    assert base == cache_key(
        "m", [{"role": "user", "content": [image_part(frame.copy())]}], {"t": 0}
    )
    assert base != cache_key("other", messages, {"t": 0})
    assert base != cache_key("m", messages, {"t": 1})
    frame[0, 0, 0] ^= 1
    assert base != cache_key("m", [{"role": "user", "content": [image_part(frame)]}], {"t": 0})


# -- the API key ---------------------------------------------------------------------------------
def test_api_key_is_sent_but_never_logged_or_raised(server, make_client, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client()
    server.script = [Reply(status=503, body=json.dumps({"echo": f"Bearer {API_KEY}"}))]
    with pytest.raises(VlmError) as unavailable:
        review(client)
    assert server.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"

    monkeypatch.setenv("OTHER_KEY", API_KEY + "-revoked")
    with pytest.raises(VlmError, match="HTTP 401") as unauthorised:
        review(make_client(api_key_env="OTHER_KEY"))

    assert "retrying" in caplog.text  # the retries were logged…
    for text in (str(unavailable.value), str(unauthorised.value), caplog.text, repr(client)):
        assert API_KEY not in text  # …without the key


def test_missing_api_key_fails_at_construction_naming_the_variable(monkeypatch):
    monkeypatch.delenv("VIVA_ABSENT_KEY", raising=False)
    with pytest.raises(VlmError, match="VIVA_ABSENT_KEY"):
        ChatCompletionsClient("http://127.0.0.1:9/v1", "m", api_key_env="VIVA_ABSENT_KEY")


# -- review helpers ------------------------------------------------------------------------------
def test_sample_frames_is_evenly_spaced_and_keeps_the_ends():
    frames = np.arange(17)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    assert sample_frames(frames, 5)[:, 0, 0, 0].tolist() == [0, 4, 8, 12, 16]
    assert sample_frames(frames, 1)[:, 0, 0, 0].tolist() == [0]
    assert len(sample_frames(frames[:3], 8)) == 3
    with pytest.raises(ValueError):
        sample_frames(frames, 0)


def test_review_pair_refuses_bad_inputs(make_client):
    client = make_client()
    with pytest.raises(ValueError, match="unknown edit type"):
        review_pair(client, clip(0), clip(1), "x", "explode")
    with pytest.raises(ValueError, match="same shape"):
        review_pair(client, clip(0), clip(1, frames=5), "x", "remove")
    with pytest.raises(ValueError, match="uint8"):
        review_pair(client, clip(0).astype(np.float32), clip(1), "x", "remove")


# -- the local transformers backend --------------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LLaVA (tiny CLIP tower, tiny Llama, byte-level tokenizer) saved like a real
    checkpoint, so the backend goes through ``from_pretrained`` exactly as in production."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({token: len(vocab) + i for i, token in enumerate(specials)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-llava"
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _count_generate(backend: Any, monkeypatch: pytest.MonkeyPatch, answer: str | None = None):
    """Spy on ``model.generate``; with ``answer``, replace its output by that text's tokens."""
    import torch

    calls: list[dict[str, Any]] = []
    real = backend.model.generate

    def generate(**inputs: Any) -> torch.Tensor:
        calls.append(inputs)
        if answer is None:
            return real(**inputs)
        ids = backend.processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")
        return torch.cat([inputs["input_ids"], ids["input_ids"]], dim=1)

    monkeypatch.setattr(backend.model, "generate", generate)
    return calls


def test_local_backend_garbage_fails_after_exactly_one_corrective_retry(tiny_llava, monkeypatch):
    from viva_pipelines.vlm.local import LocalLlavaBackend

    backend = LocalLlavaBackend(tiny_llava, max_new_tokens=8, guided=False)
    calls = _count_generate(backend, monkeypatch)
    with pytest.raises(VlmError, match=r"local LLaVA model tiny-llava .* one corrective retry"):
        review(backend, max_frames=3)
    assert len(calls) == 2
    assert calls[0]["pixel_values"].shape == (6, 3, 32, 32)  # 3 source + 3 target frames
    assert calls[0]["max_new_tokens"] == 8 and calls[0]["do_sample"] is False
    assert calls[1]["input_ids"].shape[1] > calls[0]["input_ids"].shape[1]  # the follow-up turn


def test_local_backend_success_is_validated_and_cached(tiny_llava, monkeypatch, tmp_path):
    from viva_pipelines.vlm.local import LocalLlavaBackend

    backend = LocalLlavaBackend(
        tiny_llava, max_new_tokens=8, guided=False, cache=tmp_path / "cache"
    )
    calls = _count_generate(backend, monkeypatch, answer=json.dumps(GOOD))
    assert review(backend, max_frames=2) == PairVerdict(**{**GOOD, "score": 8.0})
    assert review(backend, max_frames=2).keep
    assert len(calls) == 1


def test_a_random_local_model_answers_in_the_schema_when_guided(tiny_llava):
    """Guided decoding: whatever the weights, the review and the judge get answers that their
    validators accept, and the model's own preferences pick the values."""
    from viva_pipelines.evaluation.judge import JUDGEMENT_SCHEMA, validate_judgement
    from viva_pipelines.vlm.local import LocalLlavaBackend

    backend = LocalLlavaBackend(tiny_llava, max_new_tokens=8)
    verdict = review(backend, max_frames=2)
    assert isinstance(verdict.keep, bool) and 0 <= verdict.score <= 10 and verdict.reason
    judged = backend.complete_json(
        [{"role": "user", "content": "Grade the edit."}], validate_judgement, JUDGEMENT_SCHEMA
    )
    assert all(0 <= score <= 10 for score in judged.as_dict().values())
    text = backend.complete([{"role": "user", "content": "Grade the edit."}], JUDGEMENT_SCHEMA)
    assert json.loads(text) == judged.as_dict()  # greedy: the same answer again


def test_a_guided_choice_scores_each_option_as_one_whole_forward_pass_would(tiny_llava):
    """A choice reads the prompt (images included) once and each option on its keys and
    values: the same log probabilities as running prompt and option through the model in one
    piece, whatever the options' lengths and order."""
    import torch

    from viva_pipelines.vlm.local import LocalLlavaBackend, to_chat_template

    backend = LocalLlavaBackend(tiny_llava, max_new_tokens=4)
    frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [image_part(frame), {"type": "text", "text": "Rate"}]}]
    conversation, images = to_chat_template(messages)
    text = backend.processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=False
    )
    text += '{"keep": true, "score": '
    options = ["10", "3", "true", '"a longer answer"', "7"]

    def whole(option: str) -> float:
        start = backend._inputs(text, images)["input_ids"].shape[1]
        inputs = backend._inputs(text + option, images)
        with torch.inference_mode():
            logits = backend.model(**inputs).logits[0, start - 1 : -1].float()
        chosen = inputs["input_ids"][0, start:]
        return float(logits.log_softmax(-1).gather(1, chosen[:, None]).sum())

    scores = backend.option_scores(text, images, options)
    assert scores == pytest.approx([whole(option) for option in options], abs=1e-4)
    assert len(set(scores)) == len(options)
    assert backend._choose(text, images, options) == int(np.argmax(scores))


def test_local_backend_refuses_remote_images(tiny_llava):
    from viva_pipelines.vlm.local import LocalLlavaBackend

    backend = LocalLlavaBackend(tiny_llava, max_new_tokens=4)
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(VlmError, match="only base64 data: image URLs"):
        backend.complete_json([{"role": "user", "content": [remote]}], lambda data: data)
    # Base64 that is not a picture was an UnidentifiedImageError that dropped the connection.
    for raw, why in [
        (b"not a picture", "UnidentifiedImageError"),
        (vf.png_bomb(), "DecompressionBombError"),
    ]:
        url = "data:image/png;base64," + base64.b64encode(raw).decode()
        part = {"type": "image_url", "image_url": {"url": url}}
        with pytest.raises(VlmError, match=f"cannot give this image to a local model: {why}"):
            backend.complete_json([{"role": "user", "content": [part]}], lambda data: data)


def test_guided_decoding_writes_keys_and_lets_the_model_choose_each_value():
    from viva_pipelines.vlm.guided import fill_object

    schema = {
        "type": "object",
        "properties": {
            "keep": {"type": "boolean"},
            "score": {"type": "integer", "minimum": 0, "maximum": 10},
            "tone": {"enum": ["warm", "cold"]},
            "reason": {"type": "string", "minLength": 1},
        },
    }
    prefixes: list[str] = []

    def choose(prefix: str, options: list[str]) -> int:
        prefixes.append(prefix)
        return len(options) - 1  # the last option: false, 10, "cold"

    def write(prefix: str, least: int) -> str:
        assert prefix.endswith('"reason": "') and least == 1
        return 'a "quoted" word'

    answer = fill_object(schema, choose, write)
    assert json.loads(answer) == {
        "keep": False,
        "score": 10,
        "tone": "cold",
        "reason": 'a "quoted" word',
    }
    assert prefixes == [
        '{"keep": ',
        '{"keep": false, "score": ',
        '{"keep": false, "score": 10, "tone": ',
    ]
    with pytest.raises(ValueError, match="score: an integer needs minimum and maximum"):
        fill_object({"type": "object", "properties": {"score": {"type": "integer"}}}, choose, write)
    with pytest.raises(ValueError, match="items: guided decoding has no rule"):
        fill_object({"type": "object", "properties": {"items": {"type": "array"}}}, choose, write)


def test_vlm_serve_answers_the_review_over_the_real_protocol(tiny_llava, monkeypatch):
    """`viva vlm-serve`'s server: the client's review of a pair against a random local LLaVA
    comes back in the verdict's schema; a bad request, a wrong key and an image to fetch are
    refused with the reason."""
    import threading

    import requests

    from viva_pipelines.vlm.local import LocalLlavaBackend
    from viva_pipelines.vlm.server import make_server

    server = make_server(
        LocalLlavaBackend(tiny_llava, max_new_tokens=8), "127.0.0.1", 0, api_key=API_KEY
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        monkeypatch.setenv(KEY_ENV, API_KEY)
        client = ChatCompletionsClient(base_url, "tiny-llava", api_key_env=KEY_ENV)
        verdict = review(client, max_frames=2)
        assert isinstance(verdict.keep, bool) and 0 <= verdict.score <= 10 and verdict.reason

        def post(body: dict, key: str = API_KEY) -> requests.Response:
            headers = {"Authorization": f"Bearer {key}"}
            return requests.post(f"{base_url}/chat/completions", json=body, headers=headers)

        remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        refused = {
            "messages must be a non-empty list": post({"messages": []}),
            "missing or wrong API key": post(
                {"messages": [{"role": "user", "content": "hi"}]}, "x"
            ),
            "images must be base64 data: URLs": post(
                {"messages": [{"role": "user", "content": [remote]}]}
            ),
            "response_format type 'xml'": post(
                {
                    "messages": [{"role": "user", "content": "hi"}],
                    "response_format": {"type": "xml"},
                }
            ),
        }
        for reason, response in refused.items():
            assert (
                response.status_code in (400, 401) and reason in response.json()["error"]["message"]
            )
    finally:
        server.shutdown()
        server.server_close()


def test_vlm_serve_refuses_what_it_cannot_serve_in_one_line(tiny_llava, tmp_path, capsys):
    """A folder that is not a LLaVA checkpoint, a cap of no tokens, a port out of range and an
    address that is not this machine's: each one line naming it, exit 2, no traceback."""
    from viva_pipelines import cli

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(
        '{"_class_name": "HunyuanVideoTransformer3DModel"}'
    )
    serve = ["vlm-serve", "--port", "0", "--model"]
    refused = {
        f"{tmp_path / 'missing'}: not a LLaVA checkpoint folder (no config.json)": [
            *serve,
            str(tmp_path / "missing"),
        ],
        f"{tmp_path / 'other'}: not a loadable LLaVA checkpoint": [*serve, str(tmp_path / "other")],
        "max_new_tokens must be at least 1, got 0": [
            *serve,
            str(tiny_llava),
            "--max-new-tokens",
            "0",
        ],
        "cannot listen on 192.0.2.1:0": [*serve, str(tiny_llava), "--host", "192.0.2.1"],
    }
    for message, argv in refused.items():
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"viva vlm-serve: {message}" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exited:
        cli.main(["vlm-serve", "--model", str(tiny_llava), "--port", "99999"])
    assert exited.value.code == 2
    assert "argument --port: 99999 is not a port (0 to 65535)" in capsys.readouterr().err
