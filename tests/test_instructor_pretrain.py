"""Pretraining the demo instructor: examples from the dataset, answers after the exact SFT
prompt, held-out accuracy, and a checkpoint that loads like any LLaVA."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.sft_fixtures import write_tiny_dataset
from viva_pipelines.embedded.instructor import ensure_tiny_instructor
from viva_pipelines.model.instructor import Instructor, InstructorConfig
from viva_pipelines.storage import Storage
from viva_pipelines.train.config import PretrainOptions
from viva_pipelines.train.instructor import (
    DESCRIBE,
    RECORD_KEY,
    GroundingExample,
    answer_loss,
    edit_change,
    encode_examples,
    grounding_examples,
    prepare_instructor,
    training_batch,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Storage, pd.DataFrame]:
    """The tiny dataset, with the square of every video tracked (as ``tracked_masks`` does)."""
    storage = Storage(str(tmp_path_factory.mktemp("root")))
    manifest = write_tiny_dataset(storage).assign(shard="shard-000000")
    storage.write_parquet("qc_dataset/manifest.parquet", manifest)
    videos = manifest[manifest["modality"] == "video"].drop_duplicates("video_id")
    tracks = pd.DataFrame(
        {
            "video_id": videos["video_id"],
            "object_id": 1,
            "label": "red square",
            "status": "kept",
            "mask_key": videos["mask_key"],
        }
    )
    storage.write_parquet("tracked_masks/shard-000000/manifest.parquet", tracks)
    return storage, manifest


def test_examples_ground_each_edit_where_its_mask_is(dataset):
    storage, manifest = dataset
    train = grounding_examples(storage, manifest, split="train")
    val = grounding_examples(storage, manifest, split="val", first_frame_only=True)
    edits = [e for e in val if e.task == "edit"]
    # Val: 2 videos x (remove, color), first frame only, one caption and one locate per video.
    assert len(edits) == 4 and sum(e.task == "caption" for e in val) == 2
    locate = [e for e in val if e.task == "locate"]
    assert [e.instruction for e in locate] == ["Where is the red square?"] * 2
    assert all(e.answer == f"{e.position}." for e in locate)
    assert len(train) > 2 * len(val)  # several frames per training video, and mirrored
    for example in edits:
        # What the edit brings comes first: the state the editor pools has to name it.
        assert example.answer.startswith(f"{example.lead} {example.position}: ")
        assert example.frame.shape == (32, 32, 3) and example.frame.dtype == np.uint8
    row = manifest[(manifest["split"] == "val") & (manifest["modality"] == "video")].iloc[0]
    first = next(e for e in edits if e.instruction == row.instruction)
    change = edit_change(row.source_caption, row.target_caption)
    assert first.answer == f"{change}, {first.position}: {row.target_caption}."
    caption = next(e for e in val if e.task == "caption")
    assert caption.instruction == DESCRIBE and caption.answer == row.source_caption
    # The colour edit of video 1 has a reference image; examples carry it to the prompt.
    assert any(e.reference is not None for e in train if e.task == "edit")


def test_a_mirrored_example_swaps_left_and_right_everywhere():
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[:, 0] = 255
    example = GroundingExample(
        "edit", "Add a cat on the left.", frame, None, "on the left: a cat.", "on the left"
    )
    mirror = example.mirrored()
    assert mirror.instruction == "Add a cat on the right." and mirror.position == "on the right"
    assert mirror.answer == "on the right: a cat." and (mirror.frame[:, -1] == 255).all()
    assert mirror.mirrored().instruction == example.instruction


def test_answers_follow_the_exact_sft_prompt_and_only_they_are_learned(dataset):
    storage, manifest = dataset
    instructor = Instructor(InstructorConfig(model=str(ensure_tiny_instructor())))
    examples = grounding_examples(storage, manifest, split="val", first_frame_only=True)[:3]
    encoded = encode_examples(instructor, examples)
    batch = training_batch(instructor, encoded)
    prompts = instructor.prepare_inputs(
        [e.instruction for e in examples],
        [e.frame for e in examples],
        [e.reference for e in examples],
    )
    for i, example in enumerate(encoded):
        n = len(example.prompt)
        assert torch.equal(batch["input_ids"][i, :n], prompts["input_ids"][i, :n])
        assert (batch["labels"][i, :n] == -100).all()
        answer = batch["labels"][i, n : n + len(example.answer)]
        assert torch.equal(answer, example.answer)
        assert int(answer[-1]) == instructor.tokenizer.eos_token_id
        decoded = instructor.tokenizer.decode(example.answer[:-1])
        assert decoded == examples[i].answer


def test_the_answer_loss_runs_the_shared_prefix_once_and_equals_the_whole_forward(dataset):
    storage, manifest = dataset
    instructor = Instructor(InstructorConfig(model=str(ensure_tiny_instructor())))
    model = instructor.model.train().requires_grad_(True)
    train = grounding_examples(storage, manifest, split="train")
    with_reference = [e for e in train if e.reference is not None]
    examples = [*train[:5], with_reference[0]]  # prompts of one image and of two
    batch = training_batch(instructor, encode_examples(instructor, examples))
    assert (
        instructor.prefix_length > 0
        and (batch["labels"][:, : instructor.prefix_length] == -100).all()
    )
    parameters = list(model.parameters())
    whole = model(**batch).loss
    whole_grads = torch.autograd.grad(whole, parameters, allow_unused=True)
    shared = answer_loss(instructor, batch)
    shared_grads = torch.autograd.grad(shared, parameters, allow_unused=True)
    torch.testing.assert_close(shared, whole)
    for a, b in zip(shared_grads, whole_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # The prefix runs once: the language model sees one row of it, not one per example.
    lengths = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[:2]), with_kwargs=True
    )
    try:
        answer_loss(instructor, batch)
    finally:
        hook.remove()
    rows, total = batch["input_ids"].shape
    prefix = instructor.prefix_length
    assert lengths == [torch.Size([1, prefix]), torch.Size([rows, total - prefix])]


def test_pretraining_learns_on_held_out_frames_and_saves_a_loadable_instructor(dataset):
    storage, manifest = dataset
    record = prepare_instructor(
        storage,
        manifest,
        model=None,
        options=PretrainOptions(steps=40, batch_size=8, lr=3e-3, corpus_scenes=2),
    )
    trained = record["trained"]
    dataset_only = grounding_examples(storage, manifest, split="train")
    assert trained["train_examples"] > len(dataset_only)  # the corpus's scenes beside them
    assert 0 <= trained["val_change_accuracy"] <= 1
    assert trained["val_token_accuracy"] > trained["val_token_accuracy_untrained"] + 0.3
    assert trained["train_loss_last"] < 0.5 * trained["train_loss_first"]
    assert storage.read_json(RECORD_KEY) == record
    assert record["location"] == storage.uri(f"instructor_model/{record['sha256'][:16]}")
    pretrained = Instructor(InstructorConfig(model=record["location"]))
    untrained = Instructor(InstructorConfig(model=str(ensure_tiny_instructor())))
    frame = np.zeros((32, 32, 3), np.uint8)
    tokens = [i.encode(["Remove the red square."], [frame]).tokens for i in (pretrained, untrained)]
    assert tokens[0].shape == tokens[1].shape and not torch.allclose(tokens[0], tokens[1])


def test_a_configured_instructor_is_recorded_not_trained(dataset, tmp_path):
    storage, manifest = dataset
    record = prepare_instructor(
        storage, manifest, model=str(ensure_tiny_instructor()), options=PretrainOptions()
    )
    assert record["trained"] is None and record["location"] == str(ensure_tiny_instructor())
    assert len(record["sha256"]) == 64


def test_the_change_is_what_the_target_caption_adds_or_what_it_lost():
    source = "a cyan diamond moving over a photo of a rocket"
    assert edit_change(source, "a red diamond moving over a photo of a rocket") == "red"
    assert edit_change(source, "a white star moving over a photo of a rocket") == "white star"
    assert edit_change(source, "nothing moving over a photo of a rocket") == "nothing"
    assert edit_change(source, f"{source}, as a pencil sketch") == "pencil sketch"
    both = "a cyan diamond and a red square moving over a photo of a rocket"
    assert edit_change(both, source) == "without red square"


def test_the_corpus_grounds_fresh_scenes_with_the_dataset_generators():
    from viva_pipelines.demo_world.dataset import scene_seed
    from viva_pipelines.demo_world.render import render
    from viva_pipelines.demo_world.sample import random_scene
    from viva_pipelines.demo_world.suite import SUITE_WORLD
    from viva_pipelines.embedded.instructor_corpus import (
        CORPUS_WORLD,
        FRAMES,
        HEIGHT,
        WIDTH,
        corpus_examples,
    )
    from viva_pipelines.pairs.captions import position_phrase

    examples = corpus_examples(3)
    again = corpus_examples(3)
    assert [e.answer for e in examples] == [e.answer for e in again]
    assert all(np.array_equal(a.frame, b.frame) for a, b in zip(examples, again, strict=True))
    assert {e.task for e in examples} == {"edit", "caption", "locate"}
    edits = [e for e in examples if e.task == "edit"]
    # Every edit type of every scene (each has a local object to edit).
    assert len({e.instruction for e in edits}) >= 3 * 8
    assert any(e.reference is not None for e in edits)  # ref_add / ref_swap
    for example in edits:
        assert example.answer.startswith(f"{example.lead} {example.position}: ")
        assert example.frame.shape == (HEIGHT, WIDTH, 3)
    # A locate answer is where the renderer put the object in that frame.
    scene = random_scene(scene_seed(CORPUS_WORLD, 0), width=WIDTH, height=HEIGHT, num_frames=FRAMES)
    frames, ids = render(scene)
    first = next(o for o in scene.objects if (ids[0] == o.id).any())
    locate = next(e for e in examples if e.instruction == f"Where is the {first.label}?")
    assert np.array_equal(locate.frame, frames[0])
    assert locate.answer == f"{position_phrase(ids[0] == first.id)}."
    # Its scenes come from a stream of their own, not the training videos' or the suite's.
    assert CORPUS_WORLD not in (0, SUITE_WORLD)
