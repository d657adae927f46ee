"""Context-aware SFT: config, batch plan, cache, loop, checkpoint/resume, model directory."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load as load_safetensors

from tests.sft_fixtures import tiny_sft_config, write_tiny_dataset
from viva_pipelines.model.flow_matching import PLAIN_GATE, GateReading, sample_sigmas
from viva_pipelines.model.pipeline import MODEL_FILE, VivaEditPipeline
from viva_pipelines.model.whole_video import edit_video
from viva_pipelines.storage import Storage
from viva_pipelines.train import sft
from viva_pipelines.train.checkpoint import completed_checkpoints
from viva_pipelines.train.config import ConfigFileError, LossConfig, SftConfig
from viva_pipelines.train.distributed import DistContext
from viva_pipelines.train.reporting import Reporter
from viva_pipelines.train.sft_data import (
    BLIND_TOKENS,
    MIRRORED_SUFFIX,
    collate,
    pad_tokens,
    plan_step,
    step_generator,
    with_mirrored,
)
from viva_pipelines.video.io import read_video

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def run_sft(config: SftConfig) -> dict:
    with Reporter(enabled=True, tracking_uri=None, run_id=None) as report:
        return sft.train(config, CPU, report)


@pytest.fixture
def dataset_root(tmp_path):
    storage = Storage(str(tmp_path / "root"))
    write_tiny_dataset(storage)
    return tmp_path / "root"


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigFileError, match=r"optim\.batch_sise: Extra inputs"):
        tiny_sft_config(tmp_path, optim={"batch_sise": 4})
    with pytest.raises(ConfigFileError, match=r"loss\.instruction_dropout"):
        tiny_sft_config(tmp_path, loss={"instruction_dropout": 2})
    path = tmp_path / "bad.yaml"
    path.write_text("output_prefix: [unclosed")
    with pytest.raises(ConfigFileError, match=r"bad\.yaml"):
        SftConfig.from_yaml(path)


def test_config_round_trips_and_fingerprints_what_changes_weights(tmp_path):
    config = tiny_sft_config(tmp_path)
    config.to_yaml(tmp_path / "c.yaml")
    assert SftConfig.from_yaml(tmp_path / "c.yaml") == config
    tracked = config.model_copy(
        update={"tracking": config.tracking.model_copy(update={"run_id": "r"})}
    )
    assert tracked.fingerprint() == config.fingerprint()  # where it logs is not what it trains
    assert (
        tiny_sft_config(tmp_path, loss={"mask_lambda": 0.0}).fingerprint() != config.fingerprint()
    )
    assert config.flat_params()["optim.batch_size"] == 4


def test_step_plan_is_a_pure_function_of_seed_and_step():
    pools = {"video": np.arange(0, 10), "image": np.arange(10, 30)}
    loss = LossConfig(instruction_dropout=0.5, source_dropout=0.5)
    kwargs = dict(seed=3, pools=pools, video_fraction=0.4, batch_size=8, loss=loss)
    a, b = plan_step(5, **kwargs), plan_step(5, **kwargs)
    assert a.modality == b.modality and torch.equal(a.positions, b.positions)
    assert torch.equal(a.sigmas, b.sigmas) and torch.equal(a.drop_instruction, b.drop_instruction)
    assert torch.equal(torch.randn(3, generator=a.generator), torch.randn(3, generator=b.generator))
    modalities = [plan_step(s, **kwargs).modality for s in range(400)]
    assert 0.3 < modalities.count("video") / 400 < 0.5  # the 0.4 : 0.6 mix
    for step in range(20):
        plan = plan_step(step, **kwargs)
        assert set(plan.positions.tolist()) <= set(pools[plan.modality].tolist())
    only_video = plan_step(
        0, **{**kwargs, "video_fraction": 0.0, "pools": {"video": pools["video"]}}
    )
    assert only_video.modality == "video"  # no image pool: falls back to what exists
    halves = [a.positions[a.share(rank, 2)] for rank in range(2)]
    assert torch.equal(torch.cat(halves), a.positions)


def test_frame_dropout_draws_its_share_and_leaves_the_stream_alone_when_off():
    pools = {"video": np.arange(0, 10)}
    kwargs = dict(seed=3, pools=pools, video_fraction=1.0, batch_size=64)
    off = plan_step(2, **kwargs, loss=LossConfig(frame_dropout=0.0))
    on = plan_step(2, **kwargs, loss=LossConfig(frame_dropout=0.5))
    assert not off.drop_frame.any()
    assert 0.3 < on.drop_frame.float().mean() < 0.7
    # Off, the step draws what it drew before the setting: the noise after the plan is the
    # one drawn after the draws every plan makes.
    generator = step_generator(3, 2)
    torch.rand((), generator=generator)
    torch.randint(10, (64,), generator=generator)
    sample_sigmas(64, mean=5.0, std=1.0, shift=3.0, generator=generator)
    torch.rand(64, generator=generator), torch.rand(64, generator=generator)
    assert torch.equal(torch.randn(5, generator=off.generator), torch.randn(5, generator=generator))
    assert torch.equal(on.drop_instruction, off.drop_instruction)
    assert torch.equal(on.sigmas, off.sigmas) and torch.equal(on.positions, off.positions)


def test_collate_pads_tokens_and_applies_condition_dropout():
    tokens, mask = pad_tokens([torch.ones(2, 3), torch.ones(4, 3)])
    assert tokens.shape == (2, 4, 3) and mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert tokens[0, 2:].abs().sum() == 0

    def item(value: float) -> dict:
        latent = torch.full((2, 1, 2, 2), value)
        return {
            "source": latent,
            "target": latent,
            "mask": latent[:1],
            "reference": latent,
            "tokens": torch.full((3, 4), value),
        }

    uncond = torch.zeros(1, 4)
    batch = collate(
        [item(1.0), item(2.0)], uncond, torch.tensor([True, False]), torch.tensor([False, True])
    )
    assert batch.token_mask.tolist() == [[1, 0, 0], [1, 1, 1]]  # dropped -> unconditional
    assert batch.reference[0].abs().sum() == 0 and batch.reference[1].eq(2).all()
    assert batch.source[0].eq(1).all() and batch.source[1].abs().sum() == 0

    blind = [{**item(v), BLIND_TOKENS: torch.full((2, 4), -v)} for v in (1.0, 2.0)]
    batch = collate(
        blind, uncond, torch.tensor([True, False]), torch.tensor([False, False]),
        torch.tensor([True, True]),
    )  # fmt: skip
    assert batch.token_mask.tolist() == [[1, 0], [1, 1]]  # the dropped instruction wins
    assert batch.tokens[0, 0].abs().sum() == 0 and batch.tokens[1].eq(-2).all()
    assert batch.reference[1].eq(2).all()  # the editor still gets the reference's latents


def test_training_learns_caches_and_writes_a_loadable_model(dataset_root, monkeypatch):
    config = tiny_sft_config(
        dataset_root,
        # the last weights: an average over 30 steps still holds some of the first ones; AdamW:
        # Muon's 30 steps on 4 clips take the loss to 0.63 of its start, short of 0.6 here
        optim={"max_steps": 30, "lr": 2e-3, "ema_decay": 0.0, "optimizer": "adamw"},
        eval={"every": 30},
        runtime={"checkpoint_every": 30},
    )
    summary = run_sft(config)
    assert summary["val_loss_last"] < 0.6 * summary["val_loss_first"]
    storage = Storage(str(dataset_root))
    cache = summary["cache_uri"]
    sample = load_safetensors(
        storage.read_bytes(
            f"{cache.removeprefix(str(dataset_root) + '/')}/samples/v0-remove.safetensors"
        )
    )
    assert sample["source"].shape == (12, 2, 8, 8)  # pixel codec x2: 3*4 channels, 16/2 px
    assert sample["mask"].shape == (1, 2, 8, 8) and 0 < sample["mask"].mean() < 1
    assert sample["tokens"].shape[-1] == 64 and not bool(sample["has_reference"])
    assert storage.exists(f"{config.output_prefix}/previews/step-00000030.mp4")

    # A second run over the same data reads the cache only: the VLM is never loaded.
    def no_vlm(*args, **kwargs):
        raise AssertionError("the instructor was loaded although the cache is complete")

    monkeypatch.setattr(sft, "Instructor", no_vlm)
    again = run_sft(config.model_copy(update={"output_prefix": "sft_again"}))
    assert again["cache_uri"] == cache

    model_dir = dataset_root / config.output_prefix / "model"
    pipeline = VivaEditPipeline.from_pretrained(model_dir)
    # the model ships how its edit gate is read; a model file from before the reading reads it
    # as trained
    assert pipeline.spec.sampling.gate_reading == GateReading(0.66, 1.0)
    assert pipeline.spec.sampling.mirror_ensemble
    older = json.loads((model_dir / MODEL_FILE).read_text())
    for key in ("gate_threshold", "gate_sharpness", "mirror_ensemble"):
        del older["sampling"][key]
    shutil.copytree(model_dir, dataset_root / "older_model")
    (dataset_root / "older_model" / MODEL_FILE).write_text(json.dumps(older))
    older_spec = VivaEditPipeline.from_pretrained(dataset_root / "older_model").spec
    assert older_spec.sampling.gate_reading == PLAIN_GATE
    assert not older_spec.sampling.mirror_ensemble
    frames, _ = read_video(dataset_root / "raw_videos/shard-000000/v0.mp4")
    edited = pipeline.edit(frames, "Remove the red square.", num_steps=3)
    assert edited.shape == (2, 16, 16, 3) and edited.dtype == np.uint8
    again_edit = pipeline.edit(frames, "Remove the red square.", num_steps=3)
    assert np.array_equal(edited, again_edit)  # seeded
    # windows edited in one batch come out as each does alone (one start noise, one request)
    prepared = pipeline.prepare("Remove the red square.", frames[0])
    small = np.stack([pipeline.spec.geometry.fit(frame) for frame in frames])
    clips = np.stack([small[:2], small[2:4], small[1:3]])
    batched = pipeline.edit_clips(clips, prepared, num_steps=3).astype(int)
    for clip, got in zip(clips, batched, strict=True):
        alone = pipeline.edit_clips(clip[None], prepared, num_steps=3)[0]
        assert np.abs(alone.astype(int) - got).max() <= 1  # float sums in another order
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        pipeline.edit_clips(clips, prepared, num_steps=0)  # not the model's default steps
    # The mirror ensemble is the mean of the plain edit and the mirrored request's edit
    # flipped back, so a mirrored request comes out as the mirror of the edit.
    sampling = dataclasses.replace(pipeline.spec.sampling, mirror_ensemble=False)
    single = VivaEditPipeline(
        pipeline.transformer,
        pipeline.codec,
        dataclasses.replace(pipeline.spec, sampling=sampling),
        pipeline.instructor,
    )
    clip, flipped_clip = clips[:1], clips[:1, ..., ::-1, :]
    said, mirror_said = "Add a red square on the left.", "Add a red square on the right."
    first, flipped_first = frames[0], frames[0][:, ::-1]
    plain = single.edit_clips(clip, single.prepare(said, first), num_steps=3)
    seen_in_mirror = single.edit_clips(
        flipped_clip, single.prepare(mirror_said, flipped_first), num_steps=3
    )[..., ::-1, :]
    assert not np.array_equal(plain, seen_in_mirror)  # two views that differ
    both = pipeline.edit_clips(clip, pipeline.prepare(said, first), num_steps=3)
    expected = (plain.astype(float) + seen_in_mirror) / 2
    assert np.abs(both - expected).max() <= 1  # rounded once instead of twice
    mirrored_request = pipeline.edit_clips(
        flipped_clip, pipeline.prepare(mirror_said, flipped_first), num_steps=3
    )
    assert np.abs(mirrored_request[..., ::-1, :].astype(int) - both).max() <= 1
    out = edit_video(
        model_dir,
        dataset_root / "raw_videos/shard-000000/v0.mp4",
        "Make the red square blue.",
        dataset_root / "out.mp4",
        num_steps=2,
        progress=False,
    )
    assert read_video(out.path)[0].shape == frames.shape  # every frame, at the source's size


def test_a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(dataset_root):
    straight = tiny_sft_config(dataset_root, "straight")
    run_sft(straight)
    storage = Storage(str(dataset_root))
    assert completed_checkpoints(storage, "straight") == [3, 6]

    interrupted = tiny_sft_config(dataset_root, "interrupted")
    run_sft(interrupted)
    # Lose everything after step 3, as if the process died right after that checkpoint.
    storage.delete("interrupted/checkpoints/step-00000006")
    storage.delete("interrupted/model")
    summary = run_sft(interrupted)
    assert summary["resumed_from"] == 3
    weights = [
        load_safetensors(
            storage.read_bytes(f"{prefix}/checkpoints/step-00000006/model.safetensors")
        )
        for prefix in ("straight", "interrupted")
    ]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_gradient_accumulation_trains_the_same_global_batch(dataset_root):
    """Micro-batches of 2 (or 1) summed over the step give the weights of the whole batch of 4
    at once: same samples, same noise, and with mask_lambda 0 the loss is a plain mean."""
    weights = {}
    for accumulation in (1, 2, 4):
        config = tiny_sft_config(
            dataset_root,
            f"accumulate{accumulation}",
            optim={"grad_accumulation": accumulation, "lr": 1e-3},
            loss={"mask_lambda": 0.0},
        )
        run_sft(config)
        storage = Storage(str(dataset_root))
        key = f"accumulate{accumulation}/checkpoints/step-00000006/model.safetensors"
        weights[accumulation] = load_safetensors(storage.read_bytes(key))
    for accumulation in (2, 4):
        for name, tensor in weights[1].items():
            assert torch.allclose(weights[accumulation][name], tensor, atol=1e-5), name


def test_a_batch_that_does_not_split_into_micro_batches_is_refused(dataset_root):
    config = tiny_sft_config(dataset_root, "odd", optim={"grad_accumulation": 3})
    with pytest.raises(ValueError, match=r"4 is not divisible by 1 ranks x 3 micro-batches"):
        run_sft(config)


def test_ablation_switches_change_what_is_trained(dataset_root):
    storage = Storage(str(dataset_root))
    base = tiny_sft_config(dataset_root, "full")
    text_only = tiny_sft_config(dataset_root, "text", model={"text_only": True})
    video_only = tiny_sft_config(dataset_root, "video", data={"use_images": False})
    rows = sft.training_rows(storage, video_only)
    assert set(rows["modality"]) == {"video"}
    with Reporter(enabled=False, tracking_uri=None, run_id=None) as report:
        codec = sft.load_codec(base.model.codec)
        full_cache = sft.prepare_cache(storage, base, CPU, codec, report)
        text_cache = sft.prepare_cache(storage, text_only, CPU, codec, report)
    assert full_cache[2] != text_cache[2]  # a text-only instructor is another cache
    full_tokens = full_cache[0][0]["tokens"]
    text_tokens = text_cache[0][0]["tokens"]
    assert text_tokens.shape[0] < full_tokens.shape[0]  # no image tokens


def test_frame_dropout_caches_what_the_instructor_says_without_the_picture(dataset_root):
    storage = Storage(str(dataset_root))
    config = tiny_sft_config(dataset_root, "blind", loss={"frame_dropout": 0.5})
    with Reporter(enabled=False, tracking_uri=None, run_id=None) as report:
        codec = sft.load_codec(config.model.codec)
        plain_samples, _, plain_prefix = sft.prepare_cache(
            storage, tiny_sft_config(dataset_root, loss={"frame_dropout": 0.0}), CPU, codec, report
        )
        samples, _, prefix = sft.prepare_cache(storage, config, CPU, codec, report)
    assert prefix != plain_prefix and BLIND_TOKENS not in plain_samples[0]
    index = samples.index
    videos = index[index["modality"] == "video"]
    # Two pairs of one instruction from two videos: the blind tokens cannot tell them apart,
    # the tokens of the real pictures can.
    by_instruction = videos.groupby("instruction")["sample_id"].apply(list)
    first, second = (
        samples[int(index.index[index["sample_id"] == sample_id][0])]
        for sample_id in next(ids for ids in by_instruction if len(ids) > 1)[:2]
    )
    assert torch.equal(first[BLIND_TOKENS], second[BLIND_TOKENS])
    assert not torch.equal(first["tokens"], second["tokens"])
    plain = next(samples[i] for i in range(len(samples)) if not samples[i]["has_reference"])
    assert plain[BLIND_TOKENS].shape == plain["tokens"].shape  # one prompt, a blank picture
    assert torch.equal(plain_samples[0]["tokens"], samples[0]["tokens"])


def test_pairs_that_name_a_side_are_also_learned_in_a_mirror(dataset_root):
    rows = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "split": ["train", "train", "val"],
            "instruction": [
                "Add a red star at the top left.",
                "Remove the leftover circle.",  # no side named: no twin
                "Add a red star on the right.",  # val: never
            ],
        }
    )
    both = with_mirrored(rows)
    assert both["sample_id"].tolist() == ["a", f"a{MIRRORED_SUFFIX}", "b", "c"]
    assert both["instruction"].tolist()[1] == "Add a red star at the top right."
    assert both["mirrored"].tolist() == [False, True, False, False]

    storage = Storage(str(dataset_root))
    manifest = storage.read_parquet("qc_dataset/manifest.parquet")
    sided = manifest["instruction"] == "Make the red square blue."
    manifest.loc[sided, "instruction"] = "Make the red square on the left blue."
    storage.write_parquet("qc_dataset/manifest.parquet", manifest)
    config = tiny_sft_config(dataset_root, "mirror")
    plain = tiny_sft_config(dataset_root, "plain", data={"mirror": False})
    with Reporter(enabled=False, tracking_uri=None, run_id=None) as report:
        codec = sft.load_codec(config.model.codec)
        samples, _, prefix = sft.prepare_cache(storage, config, CPU, codec, report)
        plain_samples, _, plain_prefix = sft.prepare_cache(storage, plain, CPU, codec, report)
    assert prefix != plain_prefix  # a cache without the mirrored samples is another cache
    index = samples.index.set_index("sample_id")
    train = plain_samples.index.query("split == 'train'")
    twins = {f"{sid}{MIRRORED_SUFFIX}" for sid in train.query("edit_type == 'color'")["sample_id"]}
    assert len(twins) == 4 and set(index.query("split == 'train'").index) == {
        *train["sample_id"],
        *twins,
    }
    assert index.loc["v0-color" + MIRRORED_SUFFIX, "instruction"].endswith("on the right blue.")
    assert twins <= set(sft.training_rows(storage, config)["sample_id"])  # what benches read too
    position = index.index.get_loc
    for sid in ("v0-color", "v0-color-image"):
        original, mirrored = samples[position(sid)], samples[position(sid + MIRRORED_SUFFIX)]
        for field in ("source", "target", "reference"):
            seen = codec.decode(mirrored[field][None])
            assert torch.allclose(seen, codec.decode(original[field][None]).flip(-1), atol=1e-6)
        assert torch.equal(mirrored["mask"], original["mask"].flip(-1))
        # the instructor read the mirrored instruction ("right" and "left" differ in length)
        assert mirrored["tokens"].shape[0] != original["tokens"].shape[0]


@pytest.mark.slow
@pytest.mark.parametrize("parallel, optimizer", [("ddp", "muon"), ("fsdp", "adamw")])
def test_two_gloo_processes_follow_the_single_process_loss_trajectory(
    dataset_root, tmp_path, parallel, optimizer
):
    """DDP with Muon (or FSDP2 with AdamW) over 2 CPU processes, each accumulating 2 micro-batches, with the same
    global batch as 1 process: same data, same noise, averaged gradients. With mask_lambda 0 the loss is a plain mean, so only
    float summation order differs. The validation at step 10 runs on the weights' average and
    training goes on from its own weights (FSDP2 must not reuse the average's gathered copy)."""
    summaries = {}
    for nproc in (1, 2):
        config = tiny_sft_config(
            dataset_root,
            f"{parallel}{nproc}",
            optim={"max_steps": 20, "lr": 1e-3, "ema_decay": 0.9, "optimizer": optimizer},
            loss={"mask_lambda": 0.0},
            eval={"every": 10, "sample_count": 1},
            runtime={"checkpoint_every": 20, "parallel": parallel},
        )
        if nproc == 2:  # and each rank in 2 micro-batches: the sync skips the first backward
            config = config.model_copy(
                update={"optim": config.optim.model_copy(update={"grad_accumulation": 2})}
            )
        path = tmp_path / f"{parallel}{nproc}.yaml"
        config.to_yaml(path)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={nproc}",
                "-m",
                "viva_pipelines.train.sft",
                "--config",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        summaries[nproc] = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("train_loss_first", "train_loss_last", "val_loss_last"):
        assert summaries[2][key] == pytest.approx(summaries[1][key], rel=1e-4), key
    assert summaries[1]["val_loss_last"] < summaries[1]["val_loss_first"]
    assert summaries[2]["model_uri"].endswith("/model")  # full weights gathered, even sharded


def test_a_text_to_video_checkpoint_is_widened_and_checked_against_the_instructor(tmp_path):
    from diffusers import HunyuanVideoTransformer3DModel

    from viva_pipelines.model.transformer import tiny_transformer_config

    # A CLIP-pooled text-to-video DiT: 24-wide pooled vectors where the instructor gives 64.
    base = {**tiny_transformer_config(12, 64, pooled_dim=24), "in_channels": 12}
    t2v = HunyuanVideoTransformer3DModel(**base)
    t2v.save_pretrained(tmp_path / "t2v")
    config = tiny_sft_config(tmp_path, model={"transformer": str(tmp_path / "t2v")})
    model = sft.build_model(config, latent_channels=12, token_dim=64)
    assert model.config.in_channels == 36 and model.x_embedder.proj.weight[:, 12:].abs().sum() == 0
    pooled_input = model.time_text_embed.text_embedder.linear_1
    assert model.config.pooled_projection_dim == 64 and pooled_input.in_features == 64
    assert pooled_input.weight.abs().sum() == 0  # starts as the base model's zero-vector output
    assert torch.equal(pooled_input.bias, t2v.time_text_embed.text_embedder.linear_1.bias)
    model.save_pretrained(tmp_path / "editing")  # the converted config reloads as it is
    reloaded = HunyuanVideoTransformer3DModel.from_pretrained(tmp_path / "editing")
    assert reloaded.config.pooled_projection_dim == 64 and reloaded.config.in_channels == 36
    with pytest.raises(
        ValueError, match="text_embed_dim is 64 but the instructor's hidden size is 32"
    ):
        sft.build_model(config, latent_channels=12, token_dim=32)
