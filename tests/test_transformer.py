"""The editing DiT: channel-concatenated context, widening a text-to-video checkpoint."""

from __future__ import annotations

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel

from viva_pipelines.model.channels import POSITION_CHANNELS
from viva_pipelines.model.transformer import (
    build_transformer,
    editing_input,
    pooled_vector,
    predict_output,
    predict_velocity,
    tiny_transformer_config,
    widen_patch_embedding,
)

C, D = 4, 16


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, C, 2, 8, 8, generator=g)
    tokens = torch.randn(batch, 5, D, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])[:batch]
    return latents, tokens, mask


def test_widened_text_to_video_model_starts_as_the_base_model():
    config = tiny_transformer_config(C, D)
    torch.manual_seed(0)
    base = HunyuanVideoTransformer3DModel(**{**config, "in_channels": C})
    # Give the base weights that are not zero anywhere, like a trained checkpoint.
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.02 * torch.randn_like(p))
    noisy, tokens, mask = inputs()
    sigma = torch.tensor([0.3, 0.8])
    pooled = pooled_vector(tokens, mask, "instructor_mean")
    expected = base(
        hidden_states=noisy,
        timestep=sigma * 1000,
        encoder_hidden_states=tokens,
        encoder_attention_mask=mask,
        pooled_projections=pooled,
        return_dict=False,
    )[0]

    widened = widen_patch_embedding(base, 2 * C)
    assert widened.config.in_channels == 3 * C
    assert widened.x_embedder.proj.weight[:, C:].abs().sum() == 0
    for seed in (1, 2):  # whatever the source and reference latents hold
        source, reference = torch.randn(2, C, 2, 8, 8), torch.randn(2, C, 1, 8, 8) * seed
        out = predict_velocity(widened, noisy, sigma, source, reference, tokens, mask, pooled)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    # The new channels are trainable and do matter once they are not zero.
    loss = predict_velocity(widened, noisy, sigma, source, reference, tokens, mask, pooled).sum()
    loss.backward()
    assert widened.x_embedder.proj.weight.grad[:, C:].abs().sum() > 0


def test_editing_input_stacks_noisy_source_and_repeated_reference():
    noisy, source = torch.randn(2, C, 3, 4, 4), torch.randn(2, C, 3, 4, 4)
    reference = torch.randn(2, C, 1, 4, 4)
    stacked = editing_input(noisy, source, reference)
    assert stacked.shape == (2, 3 * C, 3, 4, 4)
    assert torch.equal(stacked[:, :C], noisy) and torch.equal(stacked[:, C : 2 * C], source)
    for t in range(3):
        assert torch.equal(stacked[:, 2 * C :, t], reference[:, :, 0])
    assert editing_input(noisy, source, None)[:, 2 * C :].abs().sum() == 0
    with pytest.raises(ValueError, match="source"):
        editing_input(noisy, source[:, :, :2])


def test_position_channels_tell_the_model_where_each_cell_is():
    noisy = torch.randn(2, C, 3, 4, 6)
    stacked = editing_input(noisy, noisy, positions=True)
    assert stacked.shape == (2, 3 * C + POSITION_CHANNELS, 3, 4, 6)
    rows, columns = stacked[:, 3 * C], stacked[:, 3 * C + 1]
    assert torch.equal(rows[0, 0, :, 0], torch.linspace(-1, 1, 4))
    assert torch.equal(columns[1, 2, 0], torch.linspace(-1, 1, 6))
    assert torch.equal(rows[:, :1].expand_as(rows), rows)  # the same in every frame

    # A picture that is the same everywhere: rotary (relative) positions tell its patches
    # apart only through the borders (an edge patch has no neighbours on one side), so their
    # outputs barely differ; with the channels every patch knows where it is.
    constant = torch.ones(1, C, 2, 8, 8)
    _, tokens, mask = inputs(batch=1)
    pooled = pooled_vector(tokens, mask, "instructor_mean")
    spread = {}
    for positions in (False, True):
        config = tiny_transformer_config(C, D, position_channels=positions)
        model = build_transformer(config, seed=0, init="default")
        assert model.config.in_channels == 3 * C + POSITION_CHANNELS * positions
        out = predict_output(
            model, constant, torch.tensor(0.5), constant, None, tokens, mask, pooled
        )
        cells = out[..., ::2, ::2]  # one value per patch (the patch's pixels differ anyway)
        spread[positions] = (cells - cells[..., :1, :1]).abs().max().item()
    assert spread[True] > 10 * spread[False]


def test_pooled_vector_reads_real_tokens_only():
    tokens = torch.tensor(
        [[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]]
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pooled_vector(tokens, mask, "instructor_mean")[0].tolist() == [2.0, 3.0]
    assert pooled_vector(tokens, mask, "instructor_last").tolist() == [[3.0, 4.0], [9.0, 10.0]]
    assert pooled_vector(tokens, mask, "none").abs().sum() == 0
    with pytest.raises(ValueError, match="clip"):
        pooled_vector(tokens, mask, "clip")


def test_built_model_checks_its_channels_and_conditions_change_the_output():
    model = build_transformer(tiny_transformer_config(C, D), seed=0)
    with pytest.raises(ValueError, match="widen_patch_embedding"):
        build_transformer({**tiny_transformer_config(C, D), "in_channels": C})
    with pytest.raises(ValueError, match="widen_patch_embedding"):
        build_transformer(tiny_transformer_config(C, D, out_channels=C + 2))
    gated = build_transformer(tiny_transformer_config(C, D, out_channels=C + 1), seed=0)
    noisy, tokens, mask = inputs()
    gated_v = predict_velocity(
        gated,
        noisy,
        torch.tensor(0.5),
        noisy,
        None,
        tokens,
        mask,
        tokens.mean(1),
        prediction="source_gated",
    )
    assert gated_v.shape == noisy.shape  # the gate channel is consumed
    sigma = torch.tensor(0.5)
    pooled = pooled_vector(tokens, mask, "instructor_mean")
    out = predict_velocity(model, noisy, sigma, noisy, None, tokens, mask, pooled)
    assert out.shape == noisy.shape
    other_tokens = predict_velocity(model, noisy, sigma, noisy, None, tokens + 1, mask, pooled)
    other_source = predict_velocity(model, noisy, sigma, -noisy, None, tokens, mask, pooled)
    assert not torch.allclose(out, other_tokens) and not torch.allclose(out, other_source)
    # Padded token positions are masked out: changing them changes nothing.
    padded = tokens.clone()
    padded[0, 3:] = 50.0
    same = predict_velocity(model, noisy, sigma, noisy, None, padded, mask, pooled)
    torch.testing.assert_close(same, out)


def test_adaln_zero_starts_every_block_as_the_identity_and_still_trains():
    with pytest.raises(ValueError, match="init"):
        build_transformer(tiny_transformer_config(C, D), init="xavier")
    model = build_transformer(tiny_transformer_config(C, D), seed=0, init="adaln_zero")
    noisy, tokens, mask = inputs()
    sigma, pooled = torch.tensor(0.5), tokens.mean(1)
    # Blocks that are the identity leave the patch embedding as it is; the output starts at 0.
    embedded = model.x_embedder(editing_input(noisy, noisy)).detach()
    seen = []
    hook = model.norm_out.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    out = predict_velocity(model, noisy, sigma, noisy, None, tokens, mask, pooled)
    hook.remove()
    torch.testing.assert_close(seen[0], embedded)
    assert out.abs().max() == 0
    # It still learns: the output layer gets a gradient (from there the gates do).
    (out - 1).pow(2).sum().backward()
    assert model.proj_out.weight.grad.abs().sum() > 0
    default = build_transformer(tiny_transformer_config(C, D), seed=0)
    assert (
        predict_velocity(default, noisy, sigma, noisy, None, tokens, mask, pooled).abs().max() > 0
    )
