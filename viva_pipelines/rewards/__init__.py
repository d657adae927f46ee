"""Edit-GRPO rewards: CLIP instruction following, source preservation and PickScore.

:mod:`.clip_rewards` scores candidate edits with any ``transformers`` ``CLIPModel`` (CLIP
ViT-H-14 / ViT-L-14 and PickScore_v1 in production); :mod:`.tiny_clip` builds and trains the
tiny CLIP the CPU demo scores with, since no pretrained weights are available there.
"""
