"""Where Algorithm 1 tunes: every ``T_s`` iterations, and where the annealed observation sigma has fallen
by ``retune_sigma_ratio`` since the tuning before."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferkit.errors import UserError
from inferkit.runs import PluginSpec, RunSpec, TrainConfig, build_objects
from inferkit.trainer import observation_sigma, train, tuning_iterations


def test_a_fast_anneal_adds_the_first_iterations_where_sigma_has_fallen_by_the_ratio():
    """sigma(t) = 0.2 - 0.001 t for t <= 150: after the tuning at 0 (sigma 0.2) the first t with
    sigma(t) <= 0.2 / sqrt(2) is ceil(58.58) = 59; after the one at 100 (sigma 0.1), ceil(129.29) = 130."""
    config = TrainConfig(iterations=300, tune_every=100, sigma_start=0.2, sigma_end=0.05, sigma_anneal=0.5)
    assert sorted(tuning_iterations(config, anneal=True)) == [0, 59, 100, 130, 200]
    assert sorted(tuning_iterations(config, anneal=False)) == [0, 100, 200]
    assert sorted(tuning_iterations(dataclasses.replace(config, retune_sigma_ratio=0.0), anneal=True)) == [0, 100, 200]
    assert tuning_iterations(dataclasses.replace(config, tune_every=0), anneal=True) == frozenset()


@settings(max_examples=60, deadline=None)
@given(iterations=st.integers(1, 400), tune_every=st.integers(1, 120),
       sigmas=st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)), anneal=st.floats(0.0, 1.0),
       ratio=st.one_of(st.just(0.0), st.floats(1.01, 4.0)))
def test_between_two_tunings_sigma_never_falls_by_the_ratio(iterations, tune_every, sigmas, anneal, ratio):
    config = TrainConfig(iterations=iterations, tune_every=tune_every, sigma_start=sigmas[0], sigma_end=sigmas[1],
                         sigma_anneal=anneal, retune_sigma_ratio=ratio)
    found = sorted(tuning_iterations(config, anneal=True))
    regular = set(range(0, iterations, tune_every))
    assert regular <= set(found)
    for a, b in zip(found, [*found[1:], iterations]):
        sigma_tuned = observation_sigma(config, a)
        if ratio:  # nothing in between is due; a tuning off the interval is due
            assert all(observation_sigma(config, t) * ratio > sigma_tuned for t in range(a + 1, b))
            if b < iterations and b not in regular:
                assert observation_sigma(config, b) * ratio <= sigma_tuned
    if not ratio:
        assert set(found) == regular


@pytest.mark.parametrize("ratio", [0.5, 1.0, math.inf, math.nan, -2.0])
def test_a_ratio_that_is_neither_off_nor_above_one_is_refused(ratio):
    with pytest.raises(UserError, match="retune-sigma-ratio must be 0"):
        TrainConfig(retune_sigma_ratio=ratio).validate()


def test_a_run_tunes_where_the_schedule_says(tmp_path):
    """A ladder run with sigma annealed 0.2 -> 0.05 over 12 of 16 iterations and ``T_s`` = 8: the tuner's
    history holds exactly the iterations :func:`tuning_iterations` gives, more than the interval's."""
    train_config = TrainConfig(iterations=16, batch_size=8, tune_every=8, sigma_start=0.2, sigma_end=0.05,
                               sigma_anneal=0.75, log_every=4, checkpoint_every=16, image_every=1000,
                               eval_examples=8)
    spec = RunSpec(model=PluginSpec("ladder", {"num_layers": 2, "latent_dims": [4, 2], "nf": 8}),
                   sampler=PluginSpec("shortrun", {"num_steps": 3}),
                   tuner=PluginSpec("kl-grid", {"batch_size": 2, "grid": [0.01, 0.02], "search": "grid"}),
                   data=PluginSpec("shapes", {"num_train": 32, "num_test": 8, "image_size": 16}),
                   train=train_config)
    data, model, sampler, tuner = build_objects(spec)
    train(model, sampler, tuner, data, spec, tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "tuner.jsonl").read_text().splitlines()
    tuned = [json.loads(line)["iteration"] for line in lines]
    assert tuned == sorted(tuning_iterations(train_config, anneal=True))
    assert len(tuned) > 2  # the interval alone tunes at 0 and 8
    # sigma(t) = 0.2 - 0.0125 t: 0.2 / sqrt(2) is reached at ceil(4.69) = 5; after the tuning at 8
    # (sigma 0.1), 0.1 / sqrt(2) at ceil(10.34) = 11; after 11 (0.0625) sigma never falls to 0.0442
    assert tuned == [0, 5, 8, 11]
