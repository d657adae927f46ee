"""The ``sam2`` backend of ``tracked_masks``: Grounding-DINO finds objects, SAM 2 follows them.

Videos without annotations only come with a caption, so objects are found from text: the object
phrases go to Grounding-DINO on the first frame (boxes + which phrase each box grounds), and
every kept box prompts SAM 2's video predictor on that frame, which propagates one mask per
object through the whole clip. Objects absent from the first frame are not tracked: the
pipeline edits objects that are there from the start.

The phrases come from the step's configuration when it names the objects, and otherwise from
the caption through :func:`phrases_from_caption`.

``sam2`` is an optional dependency (extra ``sam2``): it is imported when a tracker is built, so
this module (and :func:`phrases_from_caption`) imports without it. SAM 2's video predictor
reads frames from a folder of JPEG files (``init_state``); frames are written to a temporary
folder for it, which is its documented input and keeps torchvision (a dependency of SAM 2's
image-predictor transforms only) off the path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, GroundingDinoForObjectDetection

from viva_pipelines.config.schema import Sam2Settings
from viva_pipelines.masks.types import NoObjects, TrackedObject
from viva_pipelines.video.annotations import Annotations

if TYPE_CHECKING:
    from sam2.sam2_video_predictor import SAM2VideoPredictor


@dataclass(frozen=True, eq=False)
class Detections:
    """Grounding-DINO's kept boxes on one frame, best first.

    ``boxes``: ``float32 [N, 4]`` ``(x0, y0, x1, y1)`` in pixels of the frame; ``scores``:
    ``float32 [N]``; ``labels``: the phrase each box grounds (one of the prompt phrases).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)


class Sam2Tracker:
    """Grounding-DINO + SAM 2 video predictor, loaded once and reused for every video."""

    def __init__(self, settings: Sam2Settings, detector: str, checkpoint: str | None) -> None:
        """``detector``: local folder or hub id of a Grounding-DINO model (weights and
        processor). ``checkpoint``: a SAM 2 ``.pt`` file, a SAM 2 hub id
        (``facebook/sam2.1-hiera-large``, whose config must be ``settings.config``), or
        ``None`` for seeded random weights (tests and the embedded profile only)."""
        from sam2.build_sam import build_sam2_video_predictor

        self.settings = settings
        self.device = torch.device(settings.device)
        self.processor = AutoProcessor.from_pretrained(detector)
        self.detector = GroundingDinoForObjectDetection.from_pretrained(detector)
        self.detector.to(self.device).eval()
        checkpoint = _sam2_checkpoint_path(checkpoint, settings.config)
        # Random weights must be reproducible (the demo's masks are compared across runs), but
        # seeding must not leak into the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.predictor: SAM2VideoPredictor = build_sam2_video_predictor(
                settings.config,
                ckpt_path=checkpoint,
                device=settings.device,
                hydra_overrides_extra=[f"++model.image_size={settings.image_size}"],
            )
        if importlib.util.find_spec("sam2._C") is None:
            # CPU builds of sam2 lack the connected-components kernel that fills small mask
            # holes; SAM 2 then warns on every frame and skips the step, so skip it quietly.
            self.predictor.fill_hole_area = 0

    def track(self, frames: np.ndarray, phrases: Sequence[str]) -> list[TrackedObject]:
        """Find ``phrases`` on the first frame and track every find through the clip.

        ``frames``: ``uint8 [T, H, W, 3]``; returns objects with ``bool [T, H, W]`` masks, ids
        ``1..N`` in detection order, and an empty list when nothing is found.
        """
        _check_frames(frames)
        detections = self.detect(frames[0], phrases)
        return self.track_boxes(frames, detections.boxes, detections.labels, detections.scores)

    @torch.inference_mode()
    def detect(self, frame: np.ndarray, phrases: Sequence[str]) -> Detections:
        """Grounding-DINO on one ``uint8 [H, W, 3]`` frame, filtered to distinct objects."""
        prompts = _prompt_phrases(phrases)
        height, width = frame.shape[:2]
        if not prompts:
            return _no_detections()
        # Grounding-DINO's text format: lower-case phrases, each ended by " ." (the processor
        # tokenizes it; the dots separate the phrases in the model's attention).
        text = " . ".join(prompts) + " ."
        inputs = self.processor(images=Image.fromarray(frame), text=text, return_tensors="pt")
        inputs = inputs.to(self.device)
        outputs = self.detector(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.settings.box_threshold,
            text_threshold=self.settings.text_threshold,
            target_sizes=[(height, width)],
        )[0]
        special = set(self.processor.tokenizer.all_special_tokens)
        labels = [
            _grounded_phrase(text_label, prompts, special) for text_label in result["text_labels"]
        ]
        grounded = [i for i, label in enumerate(labels) if label is not None]
        boxes = result["boxes"].float().cpu().numpy()[grounded]
        scores = result["scores"].float().cpu().numpy()[grounded]
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
        keep = _distinct_best(boxes, scores, self.settings.nms_iou, self.settings.max_objects)
        return Detections(
            boxes=boxes[keep],
            scores=scores[keep].astype(np.float32),
            labels=[labels[grounded[i]] for i in keep],
        )

    def track_boxes(
        self,
        frames: np.ndarray,
        boxes: np.ndarray,
        labels: Sequence[str],
        scores: Sequence[float] | np.ndarray | None = None,
    ) -> list[TrackedObject]:
        """Track the objects boxed on the first frame through the clip with SAM 2.

        ``frames``: ``uint8 [T, H, W, 3]``; ``boxes``: ``[N, 4]`` ``(x0, y0, x1, y1)`` pixels of
        frame 0; ``labels``/``scores``: one per box (scores default to 1.0, given boxes). All
        objects propagate together in one batch. Returns ``N`` objects, ids ``1..N`` in box
        order, masks ``bool [T, H, W]`` (SAM 2 upsamples its logits to the frame size; a pixel
        is in the mask where the logit is positive).
        """
        _check_frames(frames)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64)
        if not len(labels) == len(scores) == len(boxes):
            raise ValueError(
                f"{len(boxes)} boxes, {len(labels)} labels and {len(scores)} scores: "
                "need one label and score per box"
            )
        if len(boxes) == 0:
            return []
        masks = [np.zeros(frames.shape[:3], dtype=bool) for _ in boxes]
        with torch.inference_mode(), self._autocast():
            state = self._video_state(frames)
            for obj_id, box in enumerate(boxes, start=1):
                self.predictor.add_new_points_or_box(state, frame_idx=0, obj_id=obj_id, box=box)
            for frame_idx, obj_ids, mask_logits in self.predictor.propagate_in_video(state):
                on = (mask_logits[:, 0] > 0).cpu().numpy()  # [N, H, W]
                for obj_id, mask in zip(obj_ids, on, strict=True):
                    masks[obj_id - 1][frame_idx] = mask
        return [
            TrackedObject(
                object_id=i + 1, label=str(labels[i]), masks=masks[i], score=float(scores[i])
            )
            for i in range(len(boxes))
        ]

    def _video_state(self, frames: np.ndarray) -> dict:
        """SAM 2's inference state for ``frames``, through its JPEG-folder input.

        ``init_state`` loads every frame into memory, so the folder only lives for the call.
        """
        with tempfile.TemporaryDirectory(prefix="sam2-frames-") as folder:
            for index, frame in enumerate(frames):
                path = Path(folder) / f"{index:05d}.jpg"
                Image.fromarray(frame).save(path, quality=95, subsampling=0)
            return self.predictor.init_state(video_path=folder)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on CUDA, SAM 2's documented way to run the video predictor."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


_CLAUSE_SPLIT = re.compile(r"[,;:.!?]|\band\b|&|\bplus\b")
# Words that end the object part of a caption clause: a verb of motion or a preposition starts
# the description of what the object does or where it is ("a cup moving over a table").
_CLAUSE_END = frozenset([
    "moving", "moves", "move", "sliding", "slides", "rolling", "rolls", "floating", "floats",
    "bouncing", "bounces", "flying", "flies", "running", "runs", "walking", "walks", "spinning",
    "spins", "rotating", "rotates", "falling", "falls", "jumping", "jumps", "swimming", "swims",
    "drifting", "drifts", "crossing", "crosses", "passing", "passes", "turning", "turns", "going",
    "goes", "sitting", "sits", "standing", "stands", "lying", "lies", "resting", "rests",
    "holding", "holds", "being", "is", "are", "was", "were",
    "over", "on", "onto", "in", "into", "inside", "across", "against", "under", "underneath",
    "above", "below", "near", "behind", "beside", "besides", "along", "around", "through", "past",
    "toward", "towards", "from", "at", "with", "while", "that", "which", "who", "as", "between",
    "beneath", "upon", "within",
])  # fmt: skip
_DETERMINERS = frozenset(
    ["a", "an", "the", "some", "this", "these", "those", "its", "his", "her", "their", "our", "one"]
)


def phrases_from_caption(caption: str) -> list[str]:
    """Object phrases of a caption, for Grounding-DINO when the conf does not name the objects.

    A heuristic, not a parser: split the caption into clauses on punctuation and "and", keep
    each clause up to its first verb of motion or preposition, drop determiners. "a red circle
    and a coffee cup moving over a photo of a cat" gives ``["red circle", "coffee cup"]``. It
    splits "black and white cat" in two and misses objects named after a preposition, which is
    why the step prefers phrases given by the conf.
    """
    phrases: list[str] = []
    for clause in _CLAUSE_SPLIT.split(caption.lower()):
        words: list[str] = []
        for word in re.findall(r"[\w'-]+", clause):
            if word in _CLAUSE_END:
                break
            if word not in _DETERMINERS:
                words.append(word)
        phrase = " ".join(words)
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(
            f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}"
        )


def _prompt_phrases(phrases: Sequence[str]) -> list[str]:
    """Lower-case, dot-free, distinct phrases: dots would split a phrase in Grounding-DINO's text."""
    prompts: list[str] = []
    for phrase in phrases:
        prompt = " ".join(phrase.lower().replace(".", " ").split())
        if prompt and prompt not in prompts:
            prompts.append(prompt)
    return prompts


def _no_detections() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _grounded_phrase(text_label: str, prompts: Sequence[str], special: set[str]) -> str | None:
    """The prompt phrase a detection grounds, from the words its tokens decode to.

    Grounding-DINO labels a box with the prompt tokens above ``text_threshold``: part of a
    phrase, or spilling over the neighbouring one. The phrase with the largest share of its
    words in the label wins (the first on ties); no shared word means the box grounds nothing.
    """
    for token in special:
        text_label = text_label.replace(token, " ")
    found = set(_words(text_label))
    best, best_key = None, (0.0, 0)
    for prompt in prompts:
        words = _words(prompt)
        hits = sum(word in found for word in words)
        key = (hits / len(words), hits) if words else (0.0, 0)
        if hits and key > best_key:
            best, best_key = prompt, key
    return best


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``[N, 4]`` and ``[M, 4]`` ``(x0, y0, x1, y1)`` boxes: ``[N, M]``."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _distinct_best(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> list[int]:
    """Greedy non-maximum suppression, best score first, stopping at ``limit`` boxes."""
    overlaps = _box_iou(boxes, boxes)
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable").tolist():
        if len(keep) == limit:
            break
        if all(overlaps[i, j] <= iou for j in keep):
            keep.append(i)
    return keep


def _sam2_checkpoint_path(spec: str | None, sam2_config: str) -> str | None:
    """A local checkpoint file for ``spec``, downloading hub ids."""
    if spec is None or Path(spec).is_file():
        return spec
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    if spec not in HF_MODEL_ID_TO_FILENAMES:
        raise FileNotFoundError(
            f"SAM 2 checkpoint {spec!r} is neither a file nor a SAM 2 hub id "
            f"({', '.join(sorted(HF_MODEL_ID_TO_FILENAMES))})"
        )
    hub_config, filename = HF_MODEL_ID_TO_FILENAMES[spec]
    if hub_config != sam2_config:
        raise ValueError(
            f"SAM 2 checkpoint {spec} goes with config {hub_config}, not {sam2_config}"
        )
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=spec, filename=filename)


class Sam2MaskBackend:
    """``tracked_masks`` backend: Grounding-DINO + SAM 2 on the phrases from conf, or else on
    the objects named in each video's caption."""

    name = "sam2"

    def __init__(self, tracker: Sam2Tracker, phrases: Sequence[str] = ()) -> None:
        self.tracker = tracker
        self.phrases = list(phrases)

    def track(
        self, frames: np.ndarray, annotations: Annotations | None, caption: str | None
    ) -> list[TrackedObject]:
        phrases = self.phrases or phrases_from_caption(caption or "")
        if not phrases:
            raise NoObjects("nothing to look for: set masks.phrases or give the video a caption")
        return self.tracker.track(frames, phrases)
