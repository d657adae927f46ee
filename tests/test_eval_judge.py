"""The VIE-Bench-style judge: strict score parsing, and judge_edit against the scripted
chat-completions server on 127.0.0.1 (``tests/chat_server.py``; retry, failure records, cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.chat_server import KEY_ENV, Reply, clip
from viva_pipelines.evaluation.judge import (
    JUDGE_RUBRIC_PROMPT,
    JudgeParseError,
    JudgeResult,
    JudgeScores,
    judge_edit,
    parse_judgement,
)
from viva_pipelines.vlm import ChatCompletionsClient, DirectoryStore, VlmError
from viva_pipelines.vlm.messages import decode_image_url
from viva_pipelines.vlm.review import load_prompt, sample_frames

GOOD = {"instruction_following": 8, "source_fidelity": 6, "edit_quality": 7}
INSTRUCTION = "Turn the red ball blue"


def judge(client, **kwargs) -> JudgeResult:
    return judge_edit(client, clip(0), clip(1, frames=5), INSTRUCTION, **kwargs)


# -- parsing -------------------------------------------------------------------------------------
def test_parse_accepts_a_plain_and_a_fenced_answer():
    expected = JudgeScores(8, 6, 7)
    assert parse_judgement(json.dumps(GOOD)) == expected
    assert parse_judgement(f"```json\n{json.dumps(GOOD)}\n```") == expected
    assert parse_judgement(json.dumps({**GOOD, "edit_quality": 0})).edit_quality == 0
    assert expected.avg == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (json.dumps({**GOOD, "edit_quality": 7.5}), "edit_quality must be an integer"),
        (json.dumps({**GOOD, "edit_quality": 7.0}), "edit_quality must be an integer"),
        (json.dumps({**GOOD, "edit_quality": "7"}), "edit_quality must be an integer"),
        (json.dumps({**GOOD, "edit_quality": True}), "edit_quality must be an integer"),
        (json.dumps({**GOOD, "edit_quality": None}), "edit_quality must be an integer"),
        (json.dumps({**GOOD, "source_fidelity": 11}), "between 0 and 10, got 11"),
        (json.dumps({**GOOD, "source_fidelity": -1}), "between 0 and 10, got -1"),
        (json.dumps({"instruction_following": 8, "edit_quality": 7}), "missing: source_fidelity"),
        (json.dumps({**GOOD, "reason": "nice"}), "unexpected: reason"),
        (f"Here are my scores: {json.dumps(GOOD)}", "not valid JSON"),
        (f"{json.dumps(GOOD)}\nHope this helps!", "not valid JSON"),
        (json.dumps([8, 6, 7]), "must be a JSON object"),
        ("", "empty"),
    ],
)
def test_parse_rejects_anything_but_three_integer_scores(text, reason):
    with pytest.raises(JudgeParseError, match=reason):
        parse_judgement(text)


def test_parse_error_is_a_value_error():
    assert issubclass(JudgeParseError, ValueError)


# -- judge_edit against the loopback server ------------------------------------------------------
def test_good_answer_gives_scores_and_the_request_has_frames_and_instruction(server, make_client):
    server.script = [Reply(json.dumps(GOOD))]
    result = judge(make_client(), max_frames=3)
    assert result == JudgeResult(JudgeScores(8, 6, 7))
    assert result.ok and result.scores.avg == pytest.approx(7.0)

    (request,) = server.requests
    parts = request.body["messages"][0]["content"]
    images = [decode_image_url(p["image_url"]["url"]) for p in parts if p["type"] == "image_url"]
    expected = [*sample_frames(clip(0), 3), *sample_frames(clip(1, frames=5), 3)]
    assert len(images) == 6
    for image, frame in zip(images, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(image), frame)
    text = " ".join(p["text"] for p in parts if p["type"] == "text")
    assert f'"{INSTRUCTION}"' in text and "instruction_following" in text
    assert "$" not in text and "<!--" not in text


def test_bad_then_good_answer_succeeds_on_the_retry(server, make_client):
    server.script = [Reply(json.dumps({**GOOD, "edit_quality": 7.5})), Reply(json.dumps(GOOD))]
    assert judge(make_client()).scores == JudgeScores(8, 6, 7)
    assert len(server.requests) == 2
    followup = server.requests[1].body["messages"][-1]
    assert "edit_quality must be an integer" in followup["content"]  # the model was told


def test_bad_answer_twice_is_recorded_as_failed_without_raising(server, make_client):
    server.script = [Reply("The edit looks great, 9/10.")]
    result = judge(make_client())
    assert result.scores is None and not result.ok
    assert "after one corrective retry" in result.error and "not valid JSON" in result.error
    assert len(server.requests) == 2


def test_endpoint_failure_is_recorded_as_failed_without_raising(server, make_client):
    server.script = [Reply(status=500, body='{"error": "overloaded"}')]
    result = judge(make_client())  # RetryPolicy(max_attempts=3) in the fixture
    assert result.scores is None
    assert "HTTP 500" in result.error and "after 3 attempt(s)" in result.error
    assert len(server.requests) == 3


def test_cache_hit_makes_no_request_and_failures_are_not_cached(server, make_client, tmp_path):
    store = DirectoryStore(tmp_path / "cache")
    server.script = [Reply("nope")]
    assert not judge(make_client(), cache=store).ok
    assert not (tmp_path / "cache").exists()

    server.script = [Reply(json.dumps(GOOD))]
    first = judge(make_client(), cache=store)
    requests_so_far = len(server.requests)
    assert judge(make_client(), cache=store) == first
    assert len(server.requests) == requests_so_far  # a hit sends nothing

    (entry,) = (p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert entry.relative_to(tmp_path / "cache").parts[0] == "judge"
    assert json.loads(entry.read_bytes()) == GOOD

    judge_edit(make_client(), clip(0), clip(1, frames=5), "Turn the ball green", cache=store)
    assert len(server.requests) == requests_so_far + 1  # another instruction, another key
    other_model = ChatCompletionsClient(server.base_url, "other-vlm", api_key_env=KEY_ENV)
    judge(other_model, cache=store)
    assert len(server.requests) == requests_so_far + 2  # another model, another key
    rubric = load_prompt(JUDGE_RUBRIC_PROMPT) + "\nBe lenient."
    judge(make_client(), cache=store, template=rubric)
    assert len(server.requests) == requests_so_far + 3  # another rubric, another key


def test_bad_inputs_are_caller_errors(make_client):
    with pytest.raises(ValueError, match="edited_frames must be uint8"):
        judge_edit(make_client(), clip(0), clip(1).astype(np.float32), INSTRUCTION)
    with pytest.raises(ValueError, match="instruction must not be empty"):
        judge_edit(make_client(), clip(0), clip(1), "  ")


def test_rubric_has_the_markers_and_keys():
    rubric = load_prompt(JUDGE_RUBRIC_PROMPT)
    assert rubric.count("$source_frames") == rubric.count("$target_frames") == 1
    assert "$instruction" in rubric
    assert all(key in rubric for key in ("instruction_following", "source_fidelity"))
    assert not issubclass(VlmError, ValueError)  # so judge_edit's catch is not too broad
