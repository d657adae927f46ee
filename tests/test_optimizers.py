"""The SFT optimizer: Muon's maths, its share of the DiT, and the AdamW half."""

import pytest
import torch

from tests.sft_fixtures import tiny_sft_config
from viva_pipelines.train.optimizers import (
    NEWTON_SCHULZ,
    MuonAdamW,
    build_optimizer,
    is_hidden_matrix,
    muon_lr,
    orthogonalise,
)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64)])  # the DiT's MLP matrices
def test_orthogonalise_keeps_the_singular_vectors_and_flattens_the_values(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    matrix[:, 0] *= 30  # one direction dominates, as in a raw gradient
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    out = orthogonalise(matrix)
    assert out.shape == matrix.shape and out.dtype == matrix.dtype
    values = torch.linalg.svdvals(out)
    assert values.min() > 0.5 and values.max() < 1.3, values  # about 1, whatever S was
    # The same directions: in the basis of U and V the result is (close to) diagonal.
    inner = u.T @ out @ vh.T
    off_diagonal = inner - torch.diag(torch.diagonal(inner))
    assert off_diagonal.abs().max() < 1e-3
    assert (torch.diagonal(inner) > 0.5).all()


def test_a_stack_of_matrices_is_orthogonalised_one_by_one():
    stack = torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(3))
    stack[1] *= 100  # each matrix is scaled on its own
    one_by_one = torch.stack([orthogonalise(matrix) for matrix in stack])
    assert torch.allclose(orthogonalise(stack), one_by_one, atol=1e-5)


def test_the_hidden_matrices_are_the_blocks_weights_only():
    assert is_hidden_matrix("transformer_blocks.0.attn.to_q.weight", torch.zeros(64, 64))
    assert is_hidden_matrix("single_transformer_blocks.1.proj_out.weight", torch.zeros(64, 320))
    assert is_hidden_matrix(
        "context_embedder.token_refiner.refiner_blocks.0.ff.net.2.weight", torch.zeros(64, 256)
    )
    assert not is_hidden_matrix("transformer_blocks.0.attn.to_q.bias", torch.zeros(64))
    assert not is_hidden_matrix("transformer_blocks.0.attn.norm_q.weight", torch.zeros(32))
    assert not is_hidden_matrix("proj_out.weight", torch.zeros(52, 64))  # the output layer
    assert not is_hidden_matrix("context_embedder.proj_in.weight", torch.zeros(64, 64))
    assert not is_hidden_matrix("x_embedder.proj.weight", torch.zeros(64, 52, 1, 2, 2))


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)])
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = torch.nn.functional.gelu(block(x))
        return self.out(x)


def test_orthogonalise_is_pytorchs_newton_schulz_in_float32():
    """``torch.optim.Muon``'s own iteration runs in bfloat16: the same to its precision on a
    well-conditioned matrix (on a low-rank gradient the two part in the directions of its
    smallest singular values, where bfloat16 keeps no digits)."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    matrix = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    theirs = _zeropower_via_newtonschulz(matrix, NEWTON_SCHULZ, 5, 1e-7).float()
    assert (orthogonalise(matrix) - theirs).abs().max() < 0.03 * theirs.abs().max()


def test_a_step_is_muon_on_the_blocks_and_pytorchs_adamw_elsewhere():
    torch.manual_seed(0)
    ours, reference = _Tiny(), _Tiny()
    reference.load_state_dict(ours.state_dict())
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    lr, decay, momentum = 1e-2, 0.1, 0.95
    optimizer = MuonAdamW(
        ours.named_parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=decay, momentum=momentum
    )
    data = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    ours(data).square().mean().backward()
    first = {n: p.grad.clone() for n, p in ours.named_parameters()}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    rest = [p for n, p in reference.named_parameters() if not is_hidden_matrix(n, p)]
    adamw = torch.optim.AdamW(rest, lr=lr, betas=(0.9, 0.95), weight_decay=decay)
    reference(data).square().mean().backward()
    adamw.step()
    for name, parameter in ours.named_parameters():
        if is_hidden_matrix(name, parameter):  # W(1 - lr.λ) - muon_lr.orthogonalise(G)
            expected = start[name] * (1 - lr * decay) - muon_lr(lr, parameter.shape) * (
                orthogonalise(first[name])
            )
            assert torch.allclose(parameter, expected, atol=1e-6), name
        else:
            assert torch.equal(parameter, dict(reference.named_parameters())[name]), name
    # The momentum is Muon's Nesterov average: B = μ.B + (1 - μ).G after each step.
    ours(data * 2).square().mean().backward()
    second = {n: p.grad.clone() for n, p in ours.named_parameters()}
    optimizer.step()
    for name, parameter in ours.named_parameters():
        if is_hidden_matrix(name, parameter):
            buffer = optimizer.state[parameter]["momentum_buffer"]
            expected = momentum * (1 - momentum) * first[name] + (1 - momentum) * second[name]
            assert torch.allclose(buffer, expected, atol=1e-7), name


def test_muon_lr_matches_the_rms_of_an_adamw_update():
    assert muon_lr(1.0, torch.Size([64, 256])) == pytest.approx(0.2 * 16)
    update = orthogonalise(torch.randn(256, 1024)) * muon_lr(1.0, torch.Size([256, 1024]))
    assert update.square().mean().sqrt() == pytest.approx(0.2, rel=0.25)  # AdamW's ~0.2


def test_build_optimizer_and_the_configuration(tmp_path):
    model = _Tiny()
    assert type(build_optimizer(model, "adamw", 1e-3, (0.9, 0.95), 0.0)) is torch.optim.AdamW
    assert isinstance(build_optimizer(model, "muon", 1e-3, (0.9, 0.95), 0.0), MuonAdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, "sgd", 1e-3, (0.9, 0.95), 0.0)
    with pytest.raises(ValueError, match="muon orthogonalises whole weight matrices"):
        tiny_sft_config(tmp_path, runtime={"parallel": "fsdp"})
    assert tiny_sft_config(tmp_path, runtime={"parallel": "fsdp"}, optim={"optimizer": "adamw"})
