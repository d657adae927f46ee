"""The validated shape of ``conf/``. Every section forbids unknown keys so a typo fails loudly.

Relative local paths are resolved against the project directory (the parent of ``conf/``), so a
setting means the same thing whatever the working directory of the process that reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    model_validator,
)

from viva_pipelines.train.config import (
    GRPO_RUNTIME,
    EvalConfig,
    GrpoEval,
    GrpoOptim,
    GrpoSampling,
    LoraOptions,
    LossConfig,
    ModelOptions,
    OptimConfig,
    PretrainOptions,
    RewardWeights,
    RuntimeConfig,
    SampleOptions,
)


def is_remote(uri: str) -> bool:
    """True for URIs that name an object store (``s3://…``) rather than a local path."""
    return "://" in uri and not uri.startswith("file://")


def _resolve_location(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if is_remote(value):
        return value.rstrip("/")
    value = value.removeprefix("file://")
    base = Path((info.context or {}).get("base_dir", "."))
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:  # "~user" for a user this machine does not know
        raise ValueError(f"cannot expand '~' in {value!r}: {exc}") from None
    return str((base / path).resolve())


#: A local path (relative to the project directory) or an object-store URI such as ``s3://b/p``.
Location = Annotated[str, AfterValidator(_resolve_location)]


def _even(value: int) -> int:
    if value % 2:
        raise ValueError("must be even (H.264 with 4:2:0 chroma needs even frame sizes)")
    return value


EvenSize = Annotated[PositiveInt, AfterValidator(_even)]


class Section(BaseModel):
    # No setting means infinity or not-a-number: `inf` would pass a `ge=1` bound and reach the
    # sampler as a NaN frame, so a non-finite float is refused like any other bad value.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class S3Settings(Section):
    """Connection to S3 or an S3-compatible server. Credentials are never configured here:
    boto3 and s3fs read them from the standard AWS environment variables or instance roles."""

    endpoint_url: str | None = None  # an S3-compatible server (MinIO, …); null = AWS
    region_name: str | None = None  # the bucket's region; null = boto3's default


class StorageSettings(Section):
    """Where every asset writes."""

    root: Location  # a local folder (relative to the project) or s3://bucket/prefix
    s3: S3Settings = S3Settings()


class MlflowSettings(Section):
    tracking_uri: str | None = Field(
        None, description="MLflow server URL; default: sqlite:///<storage.root>/mlflow.db"
    )
    experiment: str = "viva-pipelines"  # the MLflow experiment every asset's runs go to
    artifact_location: str | None = Field(
        None, description="Where new experiments keep artifacts; default <storage.root>/mlflow"
    )


#: Common video containers; a source's other files are counted, not read.
VIDEO_EXTENSIONS = (
    ".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
    ".flv", ".wmv", ".3gp", ".ogv",
)  # fmt: skip


class VideoSourceSettings(Section):
    uri: Location  # where new raw videos appear: a local folder or an s3:// prefix
    extensions: tuple[str, ...] = Field(
        VIDEO_EXTENSIONS,
        description="File name endings taken as videos (case-insensitive); other files are"
        " counted by extension in the ingest output",
    )


class SourcesSettings(Section):
    raw_videos: VideoSourceSettings


class LimitsSettings(Section):
    """Inputs beyond these are rejected at ``raw_videos`` with the reason."""

    max_file_mb: PositiveFloat = 2048  # larger files are not read
    max_pixels: PositiveInt = 3840 * 2160 * 2  # declared width x height (two 4K frames)
    max_duration_s: PositiveFloat = 600  # longer videos are rejected, not cut
    min_frames: PositiveInt = 2  # frames the normalised copy must have


class IngestSettings(Section):
    """How ``raw_videos`` shards and normalises the sources."""

    shard_size: PositiveInt = 8  # videos per video_shards partition (production: 64)
    width: EvenSize = 128  # every normalised copy's width
    height: EvenSize = 128  # ... height
    fps: PositiveFloat = 8  # ... frame rate (resampled by presentation time)
    max_frames: PositiveInt = 17  # 4k+1, what the HunyuanVideo VAE expects
    resize: Literal["crop", "pad"] = "crop"  # crop (fill, centre crop) or pad (letterbox)
    #: H.264 quality of the normalised copies (lower = better)
    crf: Annotated[int, Field(ge=0, le=51)] = 12
    limits: LimitsSettings = LimitsSettings()


class SensorSettings(Section):
    """``raw_video_sensor``: registers new source files as shards and launches their runs."""

    interval_s: PositiveInt = 30  # seconds between looks at the source
    max_runs_per_tick: PositiveInt = 16  # shard runs launched per look at most


class DemoSettings(Section):
    """The procedural demo world ``viva demo-data`` renders (docs/demo.md)."""

    videos: PositiveInt = 24  # scenes rendered
    seed: int = 0  # the same seed renders the same scenes
    width: EvenSize = 320  # frame width of the rendered videos
    height: EvenSize = 240  # ... height
    frames: PositiveInt = 48  # frames per video
    fps: PositiveFloat = 24  # frame rate of the rendered videos
    #: more scenes, rendered as image-editing pairs at qc.image_manifest (docs/assets.md)
    image_pair_scenes: Annotated[int, Field(ge=0)] = 200


class TrackRulesSettings(Section):
    """Tracks outside these bounds are dropped with the reason (see masks/tracks.py)."""

    min_area_fraction: Annotated[float, Field(ge=0, le=1)] = 0.002  # mean area, of the frame
    max_area_fraction: Annotated[float, Field(ge=0, le=1)] = 0.6  # ... at most
    min_visible_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5  # of frames (else "lost")
    min_stability: Annotated[float, Field(ge=0, le=1)] = 0.3  # consecutive-frame mask IoU


class Sam2Settings(Section):
    """Grounding-DINO + SAM 2 tracking; weights come from ``models.grounding_dino/sam2``."""

    config: str = "configs/sam2.1/sam2.1_hiera_l.yaml"  # SAM 2 model config (in its package)
    image_size: PositiveInt = 1024  # SAM 2's input side (checkpoints are trained at 1024)
    box_threshold: Annotated[float, Field(ge=0, le=1)] = 0.35  # Grounding-DINO box score
    text_threshold: Annotated[float, Field(ge=0, le=1)] = 0.25  # Grounding-DINO phrase score
    max_objects: PositiveInt = 5  # objects tracked per video, best detections first
    nms_iou: Annotated[float, Field(ge=0, le=1)] = 0.8  # above: two detections, one object
    device: str = "cpu"  # where both models run


class MasksSettings(Section):
    #: annotations (sidecars that came with the videos) | sam2
    backend: Literal["annotations", "sam2"] = "annotations"
    phrases: tuple[str, ...] = Field((), description="objects to track; empty: from captions")
    rules: TrackRulesSettings = TrackRulesSettings()
    sam2: Sam2Settings = Sam2Settings()


EditType = Literal[
    "remove", "add", "color", "swap", "style", "tone", "hybrid", "ref_add", "ref_swap"
]


class DiffusersSettings(Section):
    """The diffusers backend; weights: ``models.inpainting`` (and ``models.img2img``)."""

    device: str = "cuda"  # where the pipelines run
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # their weights' dtype
    num_inference_steps: PositiveInt = 30  # denoising steps per pipeline call
    guidance_scale: Annotated[float, Field(ge=0)] = 7.5  # classifier-free guidance
    strength: Annotated[float, Field(gt=0, le=1)] = 0.6  # how far restyles depart (1: ignore)
    batch_size: PositiveInt = 4  # frames per pipeline call (memory vs throughput)
    resolution: PositiveInt = 512  # longer side frames are resized to (a multiple of 8)
    reference_strength: Annotated[float, Field(gt=0, le=1)] = Field(
        0.8, description="strength of object rendering from a reference pasted into the mask"
    )
    mask_dilation: Annotated[int, Field(ge=0)] = 8  # pixels masks grow by before inpainting
    remove_prompt: str = "background"  # the inpainting prompt that takes an object out
    remove_negative_prompt: str = "object, person, text"  # ... and its negative prompt
    negative_prompt: str = "blurry, low quality, distorted"  # of every other pipeline call

    @model_validator(mode="after")
    def _usable(self) -> DiffusersSettings:
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        for name in ("strength", "reference_strength"):
            # The pipelines run int(steps * strength) denoising steps and refuse zero.
            if int(self.num_inference_steps * getattr(self, name)) < 1:
                raise ValueError(
                    f"{name} {getattr(self, name)} leaves none of the "
                    f"{self.num_inference_steps} inference steps"
                )
        return self


class PairsSettings(Section):
    #: opencv (CPU, classical) | diffusers (GPU, models.inpainting)
    backend: Literal["opencv", "diffusers"] = "opencv"
    edit_types: tuple[EditType, ...] = Field(
        ("remove", "add", "color", "swap", "style", "tone", "hybrid", "ref_add", "ref_swap"),
        description="the edit types made for every video",
    )
    per_type: PositiveInt = 1  # pairs of each type per video
    seed: int = 0  # the same seed makes the same pairs from the same videos
    #: pixels the object mask grows by to form the edit region
    dilation: Annotated[int, Field(ge=0)] = 4
    vocabulary: str | None = Field(
        None,
        description="the edit vocabulary file (instruction templates, tones, styles, colours "
        "and objects); null: assets/prompts/edit_instructions.yaml",
    )
    diffusers: DiffusersSettings = DiffusersSettings()


class QcThresholdsSettings(Section):
    min_mask_fraction: Annotated[float, Field(ge=0, le=1)] = 0.002  # local edit mask, of frame
    max_mask_fraction: Annotated[float, Field(ge=0, le=1)] = 0.7  # ... at most
    min_mask_stability: Annotated[float, Field(ge=0, le=1)] = 0.3  # consecutive-frame IoU
    max_outside_change: Annotated[float, Field(ge=0)] = 3.0  # mean grey levels outside the mask
    min_inside_change: Annotated[float, Field(ge=0)] = 6.0  # mean grey levels inside it
    min_total_change: Annotated[float, Field(ge=0)] = 0.5  # below: target ≈ source, rejected


class VlmSettings(Section):
    """VLM review of pairs: an OpenAI-compatible endpoint or a local transformers LLaVA.
    The API key is read from the environment variable named by ``api_key_env``."""

    enabled: bool = False  # off: no VLM is asked
    backend: Literal["openai", "local"] = "openai"  # an endpoint, or transformers in-process
    base_url: str | None = None  # the OpenAI-compatible endpoint (…/v1)
    model: str | None = None  # the model name the endpoint serves
    api_key_env: str | None = "OPENAI_API_KEY"  # environment variable holding the key
    timeout_s: PositiveFloat = 120  # per request
    max_attempts: PositiveInt = 5  # per request, retries included
    backoff_s: Annotated[float, Field(ge=0)] = 1.0  # first retry delay (exponential)
    max_backoff_s: PositiveFloat = 60  # longest retry delay (Retry-After honoured)
    rate_limit_per_s: PositiveFloat | None = None  # requests per second at most; null = no limit
    max_frames: PositiveInt = 4  # frames per video shown to the VLM, evenly spread
    local_model: str | None = None  # a LLaVA directory or hub id (backend local)
    max_new_tokens: PositiveInt = 512  # answer length cap
    device: str = "cpu"  # backend local: where it runs
    min_score: Annotated[float, Field(ge=0, le=10)] = 0  # QC: pairs the VLM scores lower fail

    @model_validator(mode="after")
    def _backend_needs_its_model(self) -> VlmSettings:
        if self.enabled and self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("a VLM with backend openai needs base_url and model")
        if self.enabled and self.backend == "local" and not self.local_model:
            raise ValueError("a VLM with backend local needs local_model")
        return self


class JudgeSettings(VlmSettings):
    """The benchmark's VLM judge (docs/benchmark.md): a VLM client as in QC, asked for a
    short verdict; off in the demo (no weights)."""

    max_new_tokens: PositiveInt = 128  # answer length cap: a score and a sentence


class QcSettings(Section):
    thresholds: QcThresholdsSettings = QcThresholdsSettings()
    #: by source video: no video in both splits
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    split_seed: int = 0  # the same seed splits the same videos the same way
    image_manifest: Location | None = Field(
        None, description="JSONL of external image-editing pairs (local path or s3:// URI)"
    )
    vlm: VlmSettings = VlmSettings()


class K8sExecutorSettings(Section):
    """``dagster_k8s.k8s_job_executor``: every step becomes a Kubernetes Job. GPU requests, node
    selectors and tolerations are per step, in ``asset_tags`` (``dagster-k8s/config``)."""

    job_namespace: str = "dagster"  # namespace the step Jobs are created in
    job_image: str | None = None  # null: the image of the code location's user deployment
    #: Always | IfNotPresent | Never
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    #: service account of the step pods (S3 access via IRSA etc.)
    service_account_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()  # Secret names for a private registry
    env_config_maps: tuple[str, ...] = ()  # ConfigMaps whose keys become env vars of every step
    env_secrets: tuple[str, ...] = ()  # Secrets whose keys become env vars (AWS, MLflow, VLM)
    labels: dict[str, str] = Field(default_factory=dict)  # extra labels on step Jobs and pods
    load_incluster_config: bool = True  # false: use the local kubeconfig (launching from outside)
    max_concurrent: PositiveInt | None = None  # pods at once per run; null = as the DAG allows


class CeleryExecutorSettings(Section):
    """``dagster_celery.celery_executor``: steps are Celery tasks routed to a queue per asset
    (op tag ``dagster-celery/queue``); GPU steps go to ``gpu_queue`` unless ``queues`` says."""

    broker: str = "pyamqp://guest@localhost:5672//"  # Celery broker URL (RabbitMQ or redis://)
    broker_env: str | None = None  # env var holding the broker URL (with password); wins
    backend: str = "rpc://"  # Celery result backend URL
    backend_env: str | None = None  # env var holding the result backend URL; wins
    default_queue: str = "dagster"  # queue of CPU steps (start workers with -q dagster)
    gpu_queue: str = "gpu"  # queue of steps in the gpu pool (workers on GPU hosts: -q gpu)
    queues: dict[str, str] = Field(default_factory=dict)  # asset name -> queue


class RetrySettings(Section):
    """One retry policy for every step that talks to a network or a GPU (transient faults:
    S3 throttling, endpoint timeouts, a pre-empted node)."""

    max_retries: Annotated[int, Field(ge=0)] = 2  # attempts after the first
    #: first backoff (exponential, with jitter) for network steps
    delay_s: Annotated[float, Field(ge=0)] = 10
    gpu_delay_s: Annotated[float, Field(ge=0)] = 30  # a GPU node takes longer to come back


class ExecutionSettings(Section):
    #: in_process | multiprocess (local) | k8s | celery (pip install .[prod])
    executor: Literal["in_process", "multiprocess", "k8s", "celery"] = "multiprocess"
    max_concurrent: PositiveInt = 2  # multiprocess: steps at once within one run
    asset_tags: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-asset op tags, e.g. dagster-k8s/config requesting nvidia.com/gpu",
    )
    retry: RetrySettings = RetrySettings()
    k8s: K8sExecutorSettings = K8sExecutorSettings()
    celery: CeleryExecutorSettings = CeleryExecutorSettings()


def _cron(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError(f"{value!r} is not a five-field cron expression")
    return value


class CronScheduleSettings(Section):
    #: five-field cron; default: Sundays 03:00
    cron: Annotated[str, AfterValidator(_cron)] = "0 3 * * 0"
    timezone: str = "UTC"  # IANA zone the cron is read in
    enabled: bool = False  # the schedule's default status; the UI can still toggle it


class SchedulesSettings(Section):
    retrain: CronScheduleSettings = CronScheduleSettings()


class AutomationSettings(Section):
    """The automation condition sensor that lets a new ``raw_videos`` shard flow on to
    ``tracked_masks`` and ``synthetic_pairs`` whatever launched it (UI, backfill, sensor)."""

    enabled: bool = False  # default status of default_automation_condition_sensor
    interval_s: PositiveInt = 30  # seconds between its evaluations


class SftSettings(Section):
    """``sft_checkpoint``: how the training process is launched and what it trains with.

    ``data``/``model``/``optim``/``loss``/``eval``/``runtime`` are the sections of the
    training config (``viva_pipelines.train.config``); the asset adds the storage, the dataset
    version, the weights from ``models.*`` and the MLflow run.
    """

    nproc_per_node: PositiveInt = 1  # torchrun processes (one per GPU in production)
    threads_per_process: PositiveInt | None = None  # torch intra-op threads per process
    timeout_s: PositiveInt = 6 * 3600  # the training process is stopped after this long
    register_model: str = "viva-sft"  # MLflow registered model name
    data: SampleOptions = SampleOptions()
    model: ModelOptions = ModelOptions()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _batch_splits(self) -> SftSettings:
        parts = self.nproc_per_node * self.optim.grad_accumulation
        if self.optim.batch_size % parts:
            raise ValueError(
                f"optim.batch_size {self.optim.batch_size} does not split over nproc_per_node "
                f"{self.nproc_per_node} x optim.grad_accumulation {self.optim.grad_accumulation}"
            )
        return self


class InstructorSettings(Section):
    """``instructor_model``: the VLM instructor ``sft_checkpoint`` reads. ``models.instructor``
    names a pretrained one; null pretrains the demo's tiny LLaVA on ``qc_dataset`` and a corpus
    of demo-world scenes (``pretrain.corpus_scenes``)."""

    register_model: str = "viva-instructor"  # MLflow registered model name (pretrained here)
    pretrain: PretrainOptions = PretrainOptions()


class RewardsSettings(Section):
    """``reward_models``: CLIP and PickScore from ``models.clip`` / ``models.pickscore``, or
    (both null) a tiny CLIP trained on the dataset's frames and captions for the demo."""

    weights: RewardWeights = RewardWeights()
    pickscore_processor: str | None = None  # PickScore_v1 ships no processor: CLIP-H's
    tiny_clip_steps: PositiveInt = 300  # training steps of the demo's tiny CLIP
    frames_per_video: PositiveInt = 2  # frames per video the tiny CLIP trains on
    seed: int = 0  # the same seed trains the same tiny CLIP


class GrpoSettings(Section):
    """``grpo_lora``: Edit-GRPO over the SFT model (sections of ``train.config.GrpoConfig``)."""

    nproc_per_node: PositiveInt = 1  # torchrun processes (one per GPU in production)
    threads_per_process: PositiveInt | None = None  # torch intra-op threads per process
    register_model: str = "viva-grpo-lora"  # MLflow registered model name of the LoRA
    lora: LoraOptions = LoraOptions()
    sampling: GrpoSampling = GrpoSampling()
    optim: GrpoOptim = GrpoOptim()
    eval: GrpoEval = GrpoEval()
    runtime: RuntimeConfig = GRPO_RUNTIME


class ModelSettings(Section):
    """Pretrained weights by local path or hub id; ``None`` selects the tiny demo models."""

    instructor: str | None = None  # a LLaVA; null = instructor_model's tiny one
    transformer: str | None = None  # a text-to-video HunyuanVideo DiT, widened for editing
    vae: str | None = None  # the HunyuanVideo VAE (codec kind hunyuan_vae)
    inpainting: str | None = None  # diffusers inpainting pipeline (pairs.backend diffusers)
    img2img: str | None = None  # img2img pipeline for restyles; null = the inpainting one
    grounding_dino: str | None = None  # open-vocabulary boxes for masks.backend sam2
    sam2: str | None = None  # SAM 2 video tracking for masks.backend sam2
    clip: str | None = None  # CLIP of the rewards and metrics; null = the tiny one trained here
    pickscore: str | None = None  # PickScore_v1 (R_PS); set together with clip, or neither


class BenchmarkSettings(Section):
    """The benchmark suite and how ``benchmark_scores`` runs it (docs/benchmark.md)."""

    root: Location = Field(description="folder or s3:// prefix the manifest's paths are under")
    manifest: Location | None = Field(
        None, description="the JSONL manifest (local path or URI); null = {root}/manifest.jsonl"
    )
    #: grpo is skipped (with a log line) until grpo_lora exists
    models: list[Literal["sft", "grpo", "identity"]] = ["sft", "grpo", "identity"]
    num_steps: PositiveInt | None = None  # sampling steps; null = each model's default
    guidance_scale: Annotated[float, Field(ge=1)] | None = None  # null = each model's default
    seed: int = 0  # start noise of every edit
    #: side-by-side preview videos per category
    previews_per_category: Annotated[int, Field(ge=0)] = 1
    device: str = "auto"  # cuda when available
    judge: JudgeSettings = JudgeSettings()


class InferenceSettings(Section):
    """Editing videos on request (``edited_videos``; docs/assets.md)."""

    root: Location = Field(
        description="folder or s3:// prefix the requests' video and reference keys are under"
    )
    requests: Location | None = Field(
        None,
        description='the JSONL requests file ({"video", "instruction", "reference"?, "out"} per '
        "line; local path or URI); null = nothing to edit",
    )
    model: str | None = Field(
        None,
        description="models:/viva-sft/3, runs:/<id>/model or a model directory; null = the "
        "latest sft_checkpoint",
    )
    lora: str | None = Field(
        None, description="an Edit-GRPO LoRA (models:/viva-grpo-lora/2 or a directory); null = none"
    )
    num_steps: PositiveInt | None = None  # sampling steps; null = the model's default
    guidance_scale: Annotated[float, Field(ge=1)] | None = None  # null = the model's default
    seed: int = 0  # start noise of every window
    crf: Annotated[int, Field(ge=0, le=51)] = 18  # H.264 quality (lower = better, larger)
    #: keep the source's full-size pixels where the model changed nothing (false: the whole crop is the edit, scaled up)
    preserve_unchanged: bool = True
    #: source | edit rows per request in the previews
    preview_frames: Annotated[int, Field(ge=0)] = 3
    window_batch: PositiveInt = 4  # windows per model call
    device: str = "auto"  # cuda when available

    #: The settings that are an edit's sampling and output keywords (``edit_whole_video``'s),
    #: each also a ``viva edit`` flag of the same name.
    EDIT_OPTIONS: ClassVar[tuple[str, ...]] = (
        "num_steps",
        "guidance_scale",
        "seed",
        "crf",
        "preserve_unchanged",
        "window_batch",
    )

    @classmethod
    def edit_option_defaults(cls) -> dict[str, Any]:
        """:data:`EDIT_OPTIONS`' defaults: an edit's keywords when nothing is configured."""
        return {key: cls.model_fields[key].default for key in cls.EDIT_OPTIONS}

    def edit_options(self) -> dict[str, Any]:
        """The keywords of :data:`EDIT_OPTIONS` these settings give: what ``edited_videos``
        edits with, and ``viva edit`` with its flags applied on top."""
        return {key: getattr(self, key) for key in self.EDIT_OPTIONS}


class Settings(Section):
    env: str = "base"
    storage: StorageSettings
    mlflow: MlflowSettings = MlflowSettings()
    sources: SourcesSettings
    ingest: IngestSettings = IngestSettings()
    sensor: SensorSettings = SensorSettings()
    masks: MasksSettings = MasksSettings()
    pairs: PairsSettings = PairsSettings()
    qc: QcSettings = QcSettings()
    demo: DemoSettings = DemoSettings()
    execution: ExecutionSettings = ExecutionSettings()
    schedules: SchedulesSettings = SchedulesSettings()
    automation: AutomationSettings = AutomationSettings()
    models: ModelSettings = ModelSettings()
    instructor: InstructorSettings = InstructorSettings()
    sft: SftSettings = SftSettings()
    rewards: RewardsSettings = RewardsSettings()
    grpo: GrpoSettings = GrpoSettings()
    benchmark: BenchmarkSettings
    inference: InferenceSettings

    @model_validator(mode="after")
    def _mlflow_needs_server_for_remote_root(self) -> Settings:
        if self.mlflow.tracking_uri is None and is_remote(self.storage.root):
            raise ValueError(
                "mlflow.tracking_uri is required when storage.root is an object store "
                "(the sqlite default only works on a local root)"
            )
        return self

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.storage.root}/mlflow.db"

    @property
    def mlflow_artifact_location(self) -> str:
        if self.mlflow.artifact_location:
            return self.mlflow.artifact_location
        root = self.storage.root
        return f"{root}/mlflow" if is_remote(root) else Path(root, "mlflow").as_uri()
