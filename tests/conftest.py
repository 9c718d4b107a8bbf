import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("INFERKIT_TEST_THREADS", "1")))

# The MNIST IDX files: $INFERKIT_MNIST_DIR, or a `shared/datasets/mnist` folder beside the checkout.
MNIST_DIR = os.environ.get("INFERKIT_MNIST_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                                  "datasets", "mnist")

TINY_LINEAR_GAUSSIAN = {"latent_dim": 3, "data_dim": 5, "sigma": 0.5, "seed": 0, "dtype": "float64"}
"""What ``tiny_linear_gaussian()`` builds when given no overrides."""


@pytest.fixture
def mnist_dir():
    if not os.path.isdir(MNIST_DIR):
        pytest.skip(f"real MNIST not present at {MNIST_DIR} (set INFERKIT_MNIST_DIR to a folder with its IDX files)")
    return MNIST_DIR


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
