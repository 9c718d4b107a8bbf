import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("INFERKIT_TEST_THREADS", "1")))

MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "mnist")


@pytest.fixture
def mnist_dir():
    if not os.path.isdir(MNIST_DIR):
        pytest.skip("real MNIST not present at ../shared/datasets/mnist")
    return MNIST_DIR
