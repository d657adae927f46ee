"""``reward_models``: the CLIP and PickScore models Edit-GRPO scores edits with."""

import dagster as dg

from viva_pipelines.config import Settings
from viva_pipelines.defs.execution import step_options
from viva_pipelines.defs.resources import StorageResource
from viva_pipelines.qc import dataset as qc
from viva_pipelines.rewards.models import RECORD_KEY, prepare_reward_models

REWARDS_CODE_VERSION = "reward_models-1"


def build_reward_defs(settings: Settings) -> dg.Definitions:
    @dg.asset(
        deps=[dg.AssetKey("qc_dataset")],
        code_version=REWARDS_CODE_VERSION,
        group_name="training",
        kinds={"pytorch"},
        **step_options(settings, "reward_models"),
    )
    def reward_models(
        context: dg.AssetExecutionContext, storage: StorageResource
    ) -> dg.MaterializeResult:
        """CLIP (instruction following, source preservation) and PickScore (aesthetics) for
        Edit-GRPO: pretrained ones from ``models.clip`` / ``models.pickscore`` with their
        identity recorded, or a tiny CLIP trained on ``qc_dataset`` for the demo."""
        store = storage.get()
        record = prepare_reward_models(
            store,
            store.read_parquet(qc.MANIFEST_KEY),
            settings.rewards,
            clip=settings.models.clip,
            pickscore=settings.models.pickscore,
        )
        trained = record["trained"] or {}
        if trained:
            context.log.info(
                f"tiny CLIP: val text->image retrieval {trained['val_retrieval_accuracy']} "
                f"(chance {trained['val_retrieval_chance']})"
            )
        identities = {name: record[name]["identity"] for name in ("clip", "pickscore")}
        return dg.MaterializeResult(
            metadata={
                "record": dg.MetadataValue.path(store.uri(RECORD_KEY)),
                "clip": dg.MetadataValue.json(identities["clip"]),
                "pickscore": dg.MetadataValue.json(identities["pickscore"]),
                **{
                    f"tiny_clip_{key}": value
                    for key, value in trained.items()
                    if isinstance(value, (int, float))
                },
            },
            data_version=dg.DataVersion(
                str(identities["clip"].get("sha256") or identities["clip"].get("revision"))[:16]
            ),
        )

    return dg.Definitions(assets=[reward_models])
