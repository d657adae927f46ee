"""The SFT run's configuration: one YAML file that fully describes a training process.

The ``sft_checkpoint`` asset writes it from ``conf/`` and launches
``torchrun -m viva_pipelines.train.sft --config <file>``; the same file reproduces the run by
hand. Unknown keys and bad values are errors that name the key, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from viva_pipelines.yaml_loading import load_yaml

#: The tiny demo instructor, built by the training process itself (deterministically).
TINY = "tiny"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleOptions(_Section):
    """How samples are cut from the dataset and mixed (the ``sft.data`` section of ``conf/``)."""

    frames: int = Field(4, ge=1)  # frames per video sample (4k+1 for the HunyuanVideo VAE)
    frame_stride: int = Field(4, ge=1)  # take every n-th frame of the stored clip
    height: int = Field(32, ge=8)  # training sample size, fitted like ingest (scale, crop)
    width: int = Field(32, ge=8)  # ... width
    #: share of all-video batches, rest images (paper: 0.4, conf/prod; 0.25 is cheaper a step)
    video_fraction: float = Field(0.25, ge=0, le=1)
    use_images: bool = True  # ablation: image pairs off
    #: training pairs whose instruction says left or right also come mirrored (sides swapped)
    mirror: bool = True
    cache_prefix: str = "sft_cache"  # storage prefix of the encoded-sample cache


class DataConfig(SampleOptions):
    """What to train on: the dataset manifest in a storage root."""

    storage_root: str
    manifest_key: str = "qc_dataset/manifest.parquet"
    dataset_version: str = ""  # the manifest's data version: part of the cache key
    endpoint_url: str | None = None
    region_name: str | None = None


class ScratchSize(_Section):
    """The DiT trained from scratch when ``models.transformer`` is null (the demo)."""

    heads: int = Field(2, ge=1)  # attention heads of the from-scratch DiT (docs/benchmark.md)
    head_dim: int = Field(32, ge=8, multiple_of=8)  # width per head (rotary axes need 8s)
    dual_layers: int = Field(2, ge=0)  # dual-stream (video | text) blocks
    single_layers: int = Field(2, ge=0)  # single-stream blocks after them
    #: adaln_zero (DiT: blocks start as the identity) | default (PyTorch's layer init)
    init: Literal["adaln_zero", "default"] = "adaln_zero"


class ModelOptions(_Section):
    """How the editing model is put together (the ``sft.model`` section of ``conf/``)."""

    instructor_prompt: str = "instructor.md"  # prompt template in assets/prompts/ (or a path)
    instructor_layer: int = -1  # hidden layer whose states condition the DiT (-1 = last)
    #: pad images to squares for the instructor, whose processor keeps a wide frame's centre only
    instructor_pad_to_square: bool = False
    text_only: bool = False  # ablation: the vanilla text-encoder baseline
    position_channels: bool = False  # the DiT also reads each latent cell's (row, column)
    crop_template: bool = True  # keep only the prompt's instruction and image tokens
    #: JSON values only (the trainer re-reads the config: a YAML date would come back as text)
    #: prod: {kind: hunyuan_vae, subfolder: vae}
    codec: dict[str, JsonValue] = Field(default_factory=lambda: {"kind": "pixel", "factor": 2})
    transformer_subfolder: str | None = None  # of models.transformer (e.g. transformer)
    pooled: Literal["instructor_last", "instructor_mean", "none"] = Field(
        "instructor_last", description="the pooled vector beside the tokens (pooled_vector)"
    )
    embedded_guidance: float = 1.0  # only for guidance-distilled checkpoints
    #: velocity (the paper, pretrained DiTs) | source_residual | source_gated | source_blend
    #: (model.flow_matching; the demo's DiT from scratch: source_blend, docs/benchmark.md)
    prediction: Literal["velocity", "source_residual", "source_gated", "source_blend"] = (
        "source_blend"
    )
    scratch: ScratchSize = ScratchSize()


class ModelConfig(ModelOptions):
    """The editing model's weights: the instructor and (optionally) a pretrained DiT."""

    instructor: str = TINY  # a LlavaForConditionalGeneration dir or hub id; "tiny" = the demo's
    transformer: str | None = None  # pretrained DiT dir/hub id; None = tiny config, from scratch


class OptimConfig(_Section):
    # The paper's is AdamW; Muon for the DiT blocks' matrices, AdamW for the rest, is the
    # demo's: +0.55 dB val frame PSNR, +0.60 dB in the edit region, 3 seeds (docs/benchmark.md).
    #: adamw | muon: Muon on the blocks' matrices, AdamW on the rest (train/optimizers.py)
    optimizer: Literal["adamw", "muon"] = "muon"
    lr: float = Field(2e-3, gt=0)  # 1e-3: -0.4 dB frame PSNR on the val split at 1200 steps
    weight_decay: float = Field(0.01, ge=0)  # AdamW's, and Muon's at the same rate
    #: AdamW; beta2 0.95 (nanoGPT's) over 0.999: +0.5 dB val PSNR in the demo's 2500 steps
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(50, ge=0)  # linear warm-up before the cosine decay
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decay floor
    grad_clip: float = Field(1.0, gt=0)  # max global gradient norm
    batch_size: int = Field(16, ge=1)  # global: split over the ranks
    #: micro-batches per rank and step, gradients summed: global batch at less memory
    grad_accumulation: int = Field(1, ge=1)
    # The demo's 0.998: +0.10 dB val frame PSNR over the last weights with 4 seeds of 4
    # (docs/benchmark.md); conf/prod sets 0, as the paper averages no weights.
    ema_decay: float = Field(0.998, ge=0, lt=1)  # EMA of the weights, sampled and shipped; 0 = off
    max_steps: int = Field(2500, ge=0)  # optimizer steps of the run


class LossConfig(_Section):
    mask_lambda: float = Field(2.0, ge=0)  # w = 1 + lambda * M; 0 = plain flow matching
    #: logit-normal noise levels' mean logit (5: sigma ~ 1, the one-step sampler's; 0: SD3's)
    sigma_mean: float = 5.0
    sigma_std: float = Field(1.0, gt=0)  # ... and its spread
    sigma_shift: float = Field(3.0, gt=0)  # > 1 trains more at high noise (the edit's layout)
    #: velocity (the paper) | clean: sigma^2, the clean video's error at every noise level
    weighting: Literal["velocity", "clean"] = "clean"
    input_perturbation: float = Field(0.0, ge=0)  # extra input noise against exposure bias; 0 = off
    gate_weight: float = Field(0.2, ge=0)  # edit-gate BCE (gated predictions only)
    instruction_dropout: float = Field(0.1, ge=0, le=1)  # empty instruction + black image
    source_dropout: float = Field(0.05, ge=0, le=1)  # zero source latents (source guidance)
    # The instructor shown a blank first frame and no reference, the instruction kept, so that
    # the editor learns the words rather than the training videos' pictures; sampling keeps the
    # frame. The demo's 0.8: +0.43 dB val frame PSNR, +0.50 dB in the edit region, ahead with 2
    # seeds of 2 (docs/benchmark.md); conf/prod sets 0, the paper's instructor always sees it.
    #: share of training examples whose instructor sees a blank frame (instruction kept)
    frame_dropout: float = Field(0.8, ge=0, le=1)

    @property
    def needs_blind_tokens(self) -> bool:
        """Whether the SFT cache must hold the instructor's blank-frame tokens."""
        return self.frame_dropout > 0


class EvalConfig(_Section):
    every: int = Field(300, ge=1)  # validation loss every n steps (and at the first and last)
    val_samples: int = Field(32, ge=1)  # val-split samples of the validation loss
    sigmas: tuple[float, ...] = (0.25, 0.5, 0.75)  # fixed noise levels of the validation loss
    sample_every: int = Field(0, ge=0)  # sampled previews + PSNR every n steps; 0 = start/end
    sample_count: int = Field(16, ge=1)  # val samples edited for previews and PSNR
    sample_steps: int = Field(1, ge=1)  # the model's default (the demo's: its one-step estimate)
    guidance_scale: float = 1.0  # instruction guidance when sampling (the model's default)
    source_guidance_scale: float | None = None  # source-video guidance; null = off
    sample_shift: float = Field(3.0, gt=0)  # time shift of the sampling schedule
    #: gated models: the gate value sampling reads as one half (0.5 = as trained; GateReading)
    gate_threshold: float = Field(0.66, gt=0, lt=1)
    gate_sharpness: float = Field(1.0, gt=0)  # ... and how steeply it reads it (1 = as trained)
    #: the shipped model also edits each clip mirrored and averages the two (2x inference)
    mirror_ensemble: bool = True


class RuntimeConfig(_Section):
    seed: int = 0  # batches and noise depend only on (seed, step): resumes are exact
    device: str = "auto"  # auto = cuda when available
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto = bf16 on GPU
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"  # auto = on GPU
    parallel: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2, one shard per block
    checkpoint_every: int = Field(300, ge=1)  # steps between resumable checkpoints
    keep_checkpoints: int = Field(2, ge=1)  # newest checkpoints kept
    threads: int | None = None  # torch intra-op threads per rank


#: Edit-GRPO's runtime defaults: its iterations are few and slow, so checkpoints come often.
GRPO_RUNTIME = RuntimeConfig(checkpoint_every=10)


class TrackingConfig(_Section):
    tracking_uri: str | None = None
    run_id: str | None = None  # log metrics into this (already created) MLflow run


class RunConfig(_Section):
    """What every training-run config shares: YAML in and out, clear errors, a fingerprint."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        path = Path(path)
        try:
            doc = load_yaml(path.read_bytes().decode("utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigFileError(f"{path}: cannot read the training config: {exc}") from exc
        except RecursionError:
            raise ConfigFileError(
                f"{path}: cannot read the training config: nested too deeply"
            ) from None
        return cls.from_mapping(doc, origin=str(path))

    @classmethod
    def from_mapping(cls, doc: Any, *, origin: str = "config") -> Self:
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigFileError(f"{origin}: {problems}") from None

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    def fingerprint(self, *, exclude: tuple[str, ...] = ("tracking",)) -> str:
        """A short hash of everything that changes the trained weights."""
        doc = self.model_dump(mode="json", exclude=set(exclude))
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def flat_params(self) -> dict[str, Any]:
        """``section.key -> value`` for MLflow params."""
        doc = self.model_dump(mode="json", exclude={"tracking"})
        return {
            f"{section}.{key}": json.dumps(value) if isinstance(value, (dict, list)) else value
            for section, values in doc.items()
            if isinstance(values, dict)
            for key, value in values.items()
        }


class SftConfig(RunConfig):
    output_prefix: str  # storage key prefix of this run: checkpoints/, model/, previews/
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _images_need_share(self) -> SftConfig:
        if not self.data.use_images and self.data.video_fraction == 0:
            raise ValueError("data.video_fraction is 0 and data.use_images is false: no samples")
        if self.optim.optimizer == "muon" and self.runtime.parallel == "fsdp":
            raise ValueError(
                "optim.optimizer muon orthogonalises whole weight matrices, which runtime.parallel "
                "fsdp shards: use adamw with fsdp, or muon with ddp"
            )
        return self


class PretrainOptions(_Section):
    """How the demo's tiny instructor is pretrained (``instructor.pretrain`` in ``conf/``;
    ``viva_pipelines.train.instructor``)."""

    steps: int = Field(1000, ge=1)  # optimizer steps of the pretraining
    #: demo-world scenes rendered for it beside the dataset (embedded/instructor_corpus.py)
    corpus_scenes: int = Field(600, ge=0)
    batch_size: int = Field(32, ge=2)  # examples per step
    lr: float = Field(2e-3, gt=0)  # AdamW, warm-up then cosine
    seed: int = 0  # the same seed pretrains the same weights


class ConfigFileError(ValueError):
    """A training config that cannot be used; the message names the file and key."""


class LoraOptions(_Section):
    rank: int = Field(8, ge=1)  # LoRA rank
    alpha: float = Field(8.0, gt=0)  # LoRA scale numerator (scale = alpha / rank)
    targets: tuple[str, ...] | None = None  # None = HunyuanVideo's attention + MLP projections


class GrpoSampling(_Section):
    group_size: int = Field(4, ge=2)  # G candidates per (source video, instruction)
    #: denoising steps of a rollout (1: the demo's one-step sampler, explored by final_noise)
    num_steps: int = Field(1, ge=1)
    train_steps: int = Field(3, ge=1)  # denoising steps trained per iteration (random subset)
    #: stochastic (trained) steps: a window of this many, ODE elsewhere (MixGRPO); null = all
    sde_window: int | None = Field(None, ge=1)
    same_noise: bool = True  # a group's candidates start from one noise (Flow-GRPO, DanceGRPO)
    noise_level: float = Field(0.7, gt=0)  # the SDE's a: how stochastic the rollouts are
    #: exploration scale (latent units) of the last step, to sigma 0, which has no SDE; 0: an
    #: ODE step (Flow-GRPO). A one-step rollout needs it (its only step is the last)
    final_noise: float = Field(0.1, ge=0)
    #: one draw of that exploration per n x n block of latent positions (1: each its own)
    final_noise_cell: int = Field(1, ge=1)
    shift: float = Field(3.0, gt=0)  # time shift of the rollout schedule
    guidance_scale: float = 1.0  # instruction guidance of the rollouts (1: CFG-free)

    @model_validator(mode="after")
    def _something_explores(self) -> Self:
        if self.num_steps == 1 and self.final_noise == 0:
            raise ValueError(
                "a one-step rollout (num_steps 1) explores only through final_noise: set it > 0"
            )
        return self


class GrpoOptim(_Section):
    iterations: int = Field(100, ge=0)  # optimizer steps of the run
    groups_per_iteration: int = Field(2, ge=1)  # groups sampled together in one batch
    accumulate: int = Field(1, ge=1)  # such batches per optimizer step (gradient accumulation)
    lr: float = Field(1e-3, gt=0)  # AdamW on the LoRA weights
    clip_range: float = Field(1e-3, gt=0)  # PPO's ε: the probability ratio is clipped to 1 ± ε
    # The demo's 0.01 holds the whole frame over an SFT base that already edits boldly (val,
    # 2 seeds: -0.02 dB frame, +0.25 dB region against -0.64 dB / +0.52 dB without; docs/
    # benchmark.md); conf/prod starts at 0, to see the ceiling.
    beta: float = Field(0.01, ge=0)  # KL to the adapter-disabled reference
    min_group_std: float = Field(0.0, ge=0)  # groups whose rewards spread less teach nothing
    grad_clip: float = Field(1.0, gt=0)  # max global gradient norm


class GrpoEval(_Section):
    every: int = Field(10, ge=1)  # iterations between held-out reward evaluations
    groups: int = Field(8, ge=1)  # held-out (val) groups scored before, during and after


#: A reward weight: a finite, non-negative number (a negative one would reward the opposite).
RewardWeight = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]


class RewardWeights(_Section):
    """``w_IF``, ``w_SP``, ``w_PS`` of Edit-GRPO's reward ``R = w_IF R_IF + w_SP R_SP + w_PS
    R_PS`` (``rewards.weights`` in ``conf/``; ``rewards.clip_rewards.edit_rewards``). PickScore
    is a logit (~100 x a cosine, ~20 for PickScore_v1) while R_IF and R_SP are cosines: at
    weight 1 it drowns the other two. Not all zero (the total would carry no signal)."""

    #: R_IF (the paper states no weights; 2 edits more than 1 on val, docs/benchmark.md)
    instruction: RewardWeight = 2.0
    preservation: RewardWeight = 1.0  # R_SP
    pickscore: RewardWeight = 0.01  # R_PS

    @field_validator("*", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # a YAML integer
        return value

    @model_validator(mode="after")
    def _not_all_zero(self) -> Self:
        if self.instruction == self.preservation == self.pickscore == 0:
            raise ValueError("reward weights are all zero: the total reward would be constant")
        return self


class GrpoConfig(RunConfig):
    """One Edit-GRPO run (``python -m viva_pipelines.train.grpo --config <yaml>``)."""

    output_prefix: str
    data: DataConfig
    sft_model: str  # storage key prefix (or local dir) of the SFT model directory
    sft_cache: str  # storage key prefix of the SFT cache: source latents and tokens
    rewards_record: str = "reward_models/models.json"
    reward_weights: RewardWeights = RewardWeights()
    lora: LoraOptions = LoraOptions()
    sampling: GrpoSampling = GrpoSampling()
    optim: GrpoOptim = GrpoOptim()
    eval: GrpoEval = GrpoEval()
    runtime: RuntimeConfig = GRPO_RUNTIME
    tracking: TrackingConfig = TrackingConfig()
