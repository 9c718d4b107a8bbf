import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("INFERKIT_TEST_THREADS", "1")))

FALLBACK_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
"""Where the real data sets are when ``INFERKIT_DATA`` is unset: ``shared/datasets`` beside the checkout."""


def data_dir(name: str) -> Path:
    """The folder of the real data set ``name``: ``$INFERKIT_DATA/NAME``, else ``FALLBACK_DATA/NAME``
    (read when this module is imported, so tests that change the environment do not move it)."""
    return DATA_ROOT / name


DATA_ROOT = Path(os.environ.get("INFERKIT_DATA", "").strip() or FALLBACK_DATA)
MNIST_DIR = str(data_dir("mnist"))

TINY_LINEAR_GAUSSIAN = {"latent_dim": 3, "data_dim": 5, "sigma": 0.5, "seed": 0, "dtype": "float64"}
"""What ``tiny_linear_gaussian()`` builds when given no overrides."""


@pytest.fixture
def mnist_dir():
    """The real MNIST folder (``$INFERKIT_DATA/mnist``, else ``../shared/datasets/mnist``); skips the
    test when it is absent."""
    if not os.path.isdir(MNIST_DIR):
        pytest.skip(f"real MNIST not present at {MNIST_DIR} (set INFERKIT_DATA to the folder holding mnist/)")
    return MNIST_DIR


@pytest.fixture
def no_fetched_data(monkeypatch, tmp_path):
    """No ``INFERKIT_DATA``, no ``INFERKIT_MIRROR`` and an empty user cache (``XDG_CACHE_HOME`` in
    ``tmp_path``), so a data set given no ``--data-dir`` finds nothing the machine holds; returns
    the cache folder inferkit uses there (``XDG_CACHE_HOME/inferkit``)."""
    monkeypatch.delenv("INFERKIT_DATA", raising=False)
    monkeypatch.delenv("INFERKIT_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "inferkit"


# Factory fixtures are session-scoped (each call builds a fresh object), so hypothesis tests may use them.


@pytest.fixture(scope="session")
def tiny_linear_gaussian():
    """``tiny_linear_gaussian(**overrides)``: a new ``LinearGaussian`` with the options of
    ``TINY_LINEAR_GAUSSIAN`` (float64, d=3, D=5, sigma=0.5, seed 0) updated by ``overrides``."""
    from inferkit.models.linear_gaussian import LinearGaussian

    def build(**overrides):
        return LinearGaussian(**{**TINY_LINEAR_GAUSSIAN, **overrides})

    return build


@pytest.fixture(scope="session")
def noisy_data():
    """``noisy_data(model, batch, seed=0)``: ``batch`` draws of ``x ~ p(x)`` from a model with Gaussian
    observation noise (decoded prior samples plus ``model.sigma`` noise), float64, detached."""

    def draw(model, batch, seed=0):
        generator = torch.Generator().manual_seed(seed)
        x = model.sample(batch, generator=generator)
        return (x + model.sigma * torch.randn(x.shape, generator=generator, dtype=torch.float64)).detach()

    return draw


@pytest.fixture(scope="session")
def tiny_ladder():
    """``tiny_ladder(**options)``: a new ``ladder`` model (built by name through the registry) with
    ``num_layers=2, latent_dims=(3, 2), nf=4, image_size=16, channels=1`` updated by ``options``."""
    import inferkit

    def build(**options):
        return inferkit.load_model("ladder", **{"num_layers": 2, "latent_dims": (3, 2), "nf": 4, "image_size": 16,
                                                "channels": 1, **options})

    return build
