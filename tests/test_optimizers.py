"""The run's optimiser (inferkit/optimizers.py): a model's SGD groups take exactly the SGD step at their
rate times the run's decay, every other parameter takes torch's own Adam step, the state round-trips
through a checkpoint, and the RBM prior hands its RBM to SGD by default."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from cli_helpers import one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from inferkit import HasSGDGroups, SGDGroup, UserError
from inferkit.models.rbm_prior import RBM_LEARNING_RATE, RBMPrior
from inferkit.optimizers import RunOptimizer, model_sgd_groups
from inferkit.runs import TrainConfig
from inferkit.trainer import learning_rate


class TwoPart(torch.nn.Module):
    """A module whose ``prior`` is an SGD group at ``rate`` and whose ``decoder`` is left to Adam."""

    def __init__(self, rate: float = 0.1, momentum: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.prior, self.decoder = torch.nn.Linear(3, 2), torch.nn.Linear(2, 4)
        self.rate, self.momentum = rate, momentum

    def sgd_groups(self) -> list[SGDGroup]:
        return [SGDGroup(tuple(self.prior.parameters()), learning_rate=self.rate, momentum=self.momentum)]

    def loss(self) -> torch.Tensor:
        x = torch.linspace(-1, 1, 15).reshape(5, 3)
        return (self.decoder(torch.tanh(self.prior(x))) ** 2).sum()


def gradients(module: torch.nn.Module) -> list[torch.Tensor]:
    module.zero_grad(set_to_none=True)
    module.loss().backward()
    return [p.grad.clone() for p in module.parameters()]


def test_sgd_groups_take_the_sgd_step_and_the_rest_torchs_adam_step():
    model = TwoPart(rate=0.1)
    assert isinstance(model, HasSGDGroups)
    reference = copy.deepcopy(model)
    adam = torch.optim.Adam(reference.decoder.parameters(), lr=1e-2, betas=(0.5, 0.999))
    optimizer = RunOptimizer(model.parameters(), model_sgd_groups(model), learning_rate=1e-2, betas=(0.5, 0.999))
    for _ in range(3):
        before = [p.detach().clone() for p in model.prior.parameters()]
        optimizer.zero_grad()
        model.loss().backward()
        grads = [p.grad.clone() for p in model.prior.parameters()]
        optimizer.step()
        for after, start, grad in zip(model.prior.parameters(), before, grads):
            torch.testing.assert_close(after.detach(), start - 0.1 * grad, rtol=0, atol=1e-7)
        adam.zero_grad()
        with torch.no_grad():  # the reference's prior is the model's before this step: the decoders see the same inputs
            for p, start in zip(reference.prior.parameters(), before):
                p.copy_(start)
        reference.loss().backward()
        adam.step()
        for p, q in zip(model.decoder.parameters(), reference.decoder.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(base=st.floats(1e-4, 1.0), group_rate=st.floats(1e-4, 1.0), iteration=st.integers(0, 999))
def test_sgd_rate_follows_the_runs_decay(base, group_rate, iteration):
    """eta'_t = eta' * eta_t / eta_0 for the trainer's own step-wise schedule, Adam at eta_t."""
    config = TrainConfig(iterations=1000, learning_rate=base, lr_milestones=(0.3, 0.7), lr_gamma=0.5)
    model = TwoPart(rate=group_rate)
    optimizer = RunOptimizer(model.parameters(), model_sgd_groups(model), learning_rate=base, betas=(0.9, 0.999))
    rate = learning_rate(config, iteration)
    optimizer.set_learning_rate(rate)
    passed = sum(iteration >= m for m in (300, 700))
    assert optimizer.sgd.param_groups[0]["lr"] == pytest.approx(group_rate * 0.5 ** passed, rel=1e-12)
    assert optimizer.adam.param_groups[0]["lr"] == pytest.approx(base * 0.5 ** passed, rel=1e-12)


def test_state_round_trips_and_without_groups_is_adams_own():
    model = TwoPart(rate=0.1, momentum=0.9)
    optimizer = RunOptimizer(model.parameters(), model_sgd_groups(model), learning_rate=1e-2, betas=(0.9, 0.999))
    for _ in range(2):
        optimizer.zero_grad()
        model.loss().backward()
        optimizer.step()
    state = optimizer.state_dict()
    assert set(state) == {"adam", "sgd"}
    twin = TwoPart(rate=0.1, momentum=0.9)
    twin.load_state_dict(model.state_dict())
    restored = RunOptimizer(twin.parameters(), model_sgd_groups(twin), learning_rate=1e-2, betas=(0.9, 0.999))
    restored.load_state_dict(copy.deepcopy(state))
    for one in (optimizer, restored):
        one.zero_grad()
    model.loss().backward()
    twin.loss().backward()
    optimizer.step()
    restored.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # momentum buffers and Adam moments came back
    plain = torch.nn.Linear(3, 2)
    adam_only = RunOptimizer(plain.parameters(), model_sgd_groups(plain), learning_rate=1e-3, betas=(0.9, 0.999))
    assert adam_only.sgd is None and set(adam_only.state_dict()) == {"state", "param_groups"}
    with pytest.raises(ValueError):
        adam_only.load_state_dict(state)
    with pytest.raises(ValueError):
        restored.load_state_dict(adam_only.state_dict())


def test_rbm_prior_gives_its_rbm_to_sgd_unless_told_adam():
    model = RBMPrior(num_latents=6, num_hidden=4, decoder_hidden=(8,), data_shape=(5,))
    (group,) = model.sgd_groups()
    assert {id(p) for p in group.parameters} == {id(p) for p in model.rbm.parameters()}
    assert group.learning_rate == RBM_LEARNING_RATE and group.momentum == 0
    optimizer = RunOptimizer(model.parameters(), model.sgd_groups(), learning_rate=1e-3, betas=(0.9, 0.999))
    assert {id(p) for g in optimizer.adam.param_groups for p in g["params"]} == {id(p) for p in model.decoder.parameters()}
    assert RBMPrior(num_latents=6, num_hidden=4, data_shape=(5,), rbm_optimizer="adam").sgd_groups() == []


@pytest.mark.parametrize("options, fragment", [({"rbm_optimizer": "rmsprop"}, "rbm_optimizer"),
                                               ({"rbm_learning_rate": 0.0}, "rbm_learning_rate"),
                                               ({"rbm_learning_rate": float("nan")}, "rbm_learning_rate")])
def test_bad_rbm_optimizer_options_are_one_line_errors(options, fragment):
    with pytest.raises(UserError, match=fragment) as info:
        RBMPrior(num_latents=4, num_hidden=3, data_shape=(5,), **options)
    assert "\n" not in str(info.value)


TINY_RBM_RUN = ["run", "--model", "rbm-prior", "--model-opt", "num_latents=4", "--model-opt", "num_hidden=3",
                "--model-opt", "decoder_hidden=8", "--model-opt", "binarize=threshold", "--data", "shapes",
                "--data-opt", "num_train=16", "--data-opt", "num_test=8", "--sampler", "vimco",
                "--sampler-opt", "num_samples=2", "--sampler-opt", "hidden=8", "--batch-size", "4", "--quiet"]


def test_a_run_checkpoints_the_rbms_sgd_state_and_resumes_into_it(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli([*TINY_RBM_RUN, "--iterations", "4", "--model-opt", "rbm_learning_rate=0.05",
                            "--out", out], capsys)
    assert code == 0, err
    state = torch.load(out / "checkpoint.pt", weights_only=True)["optimizer"]
    (group,) = state["sgd"]["param_groups"]
    assert group["base_lr"] == 0.05 and len(group["params"]) == 3
    assert json.loads((out / "config.json").read_text())["model"]["options"]["rbm_optimizer"] == "sgd"
    code, _, err = run_cli(["run", "--resume", out, "--iterations", "6", "--quiet"], capsys)
    assert code == 0, err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 6


def test_a_checkpoint_of_another_optimiser_layout_is_a_one_line_error(tmp_path, capsys):
    """config.json edited to train the RBM with Adam: the checkpoint's SGD state does not fit the run."""
    out = tmp_path / "run"
    code, _, err = run_cli([*TINY_RBM_RUN, "--iterations", "2", "--out", out], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    config["model"]["options"]["rbm_optimizer"] = "adam"
    (out / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(["run", "--resume", out, "--iterations", "4", "--quiet"], capsys)
    assert "cannot be read" in one_line_error(code, err)
