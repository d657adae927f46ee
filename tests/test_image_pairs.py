"""The demo's external image-editing pairs: written by ``viva demo-data`` in the external
manifest's format, read by ``qc_dataset`` like any external set, trained on by SFT."""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from viva_pipelines.demo_world.dataset import scene_seed
from viva_pipelines.demo_world.suite import SUITE_WORLD
from viva_pipelines.embedded.instructor_corpus import (
    CORPUS_WORLD,
    HEIGHT,
    IMAGE_PAIR_WORLD,
    WIDTH,
    write_image_pairs,
)
from viva_pipelines.model.clips import ClipGeometry
from viva_pipelines.pairs.types import EDIT_TYPES, LOCAL_EDITS
from viva_pipelines.qc.dataset import ACCEPTED
from viva_pipelines.qc.external import external_image_rows
from viva_pipelines.storage import Storage
from viva_pipelines.train.sft_data import load_pixel_sample


def _image(storage: Storage, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.read_bytes(key))))


def test_demo_image_pairs_are_exact_edits_that_qc_accepts_as_an_external_set(tmp_path: Path):
    folder = Storage(str(tmp_path / "pairs"))
    assert write_image_pairs(folder, "pairs.jsonl", 2) == 2 * len(EDIT_TYPES)
    lines = [json.loads(line) for line in folder.read_bytes("pairs.jsonl").splitlines()]
    # Scenes of their own stream: not the instructor corpus's, the videos' or the suite's.
    assert IMAGE_PAIR_WORLD not in {CORPUS_WORLD + s for s in range(1000)} | {0, SUITE_WORLD}
    assert {line["id"].split("-")[0] for line in lines} == {
        str(scene_seed(IMAGE_PAIR_WORLD, i)) for i in range(2)
    }

    store = Storage(str(tmp_path / "root"))
    rows = external_image_rows(
        store, str(tmp_path / "pairs" / "pairs.jsonl"), val_fraction=0.2, split_seed=0
    )
    assert [row["status"] for row in rows] == [ACCEPTED] * len(lines)
    assert sorted(row["edit_type"] for row in rows) == sorted(EDIT_TYPES * 2)
    for row in rows:
        source, target = _image(store, row["source_key"]), _image(store, row["target_key"])
        mask = _image(store, row["mask_key"]) > 127
        assert source.shape == target.shape == (HEIGHT, WIDTH, 3) and mask.shape == source.shape[:2]
        assert row["instruction"] and row["source_caption"] and row["target_caption"]
        if row["edit_type"] in LOCAL_EDITS:  # changes its mask and nothing else
            assert 0 < mask.mean() < 0.6
            assert np.array_equal(source[~mask], target[~mask])
            assert not np.array_equal(source[mask], target[mask])
        else:  # a global look (hybrids add one to a recolour) changes the whole frame
            assert mask.all() and not np.array_equal(source, target)
        # ref_add / ref_swap carry the image of the new object, the others none.
        assert (row["reference_key"] is not None) == row["edit_type"].startswith("ref_")


def test_an_image_pair_without_a_mask_trains_on_the_pixels_that_changed(tmp_path: Path):
    store = Storage(str(tmp_path))
    source = np.full((16, 16, 3), 40, np.uint8)
    target = source.copy()
    target[4:8, 2:10] = (200, 30, 30)  # the edit
    target[12, 12] += 3  # re-encoding noise, not an edit
    for name, image in (("s.png", source), ("t.png", target)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        store.write_bytes(name, buffer.getvalue())
    row = SimpleNamespace(
        sample_id="external-x",
        modality="image",
        instruction="Paint a red bar.",
        source_key="s.png",
        target_key="t.png",
        mask_key=None,
        reference_key=None,
    )
    sample = load_pixel_sample(
        store, row, ClipGeometry(frames=1, frame_stride=1, height=16, width=16)
    )
    expected = np.zeros((16, 16), bool)
    expected[4:8, 2:10] = True
    assert np.array_equal(sample.mask[0, 0].numpy() > 0.5, expected)
