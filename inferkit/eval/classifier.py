"""A small convolutional classifier that inferkit trains on a data set's labelled training split, used
for a Fréchet distance in its feature space (where Inception features mean little, e.g. MNIST) and,
on data with known generative factors (``shapes``), to read those factors off generated images.

One head per target: the class label, or every factor when the data carry factors. Features are the
128-d penultimate layer. The trained network is saved with what it was trained on, and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inferkit.errors import UserError
from inferkit.interfaces import DataSet
from inferkit.runs import load_plain, save_atomic

FEATURE_DIM = 128


class FeatureClassifier(nn.Module):
    """conv 3x3 -> conv 4x4/2 -> conv 4x4/2 (GELU) -> linear to 128 features -> one linear head per target."""

    def __init__(self, channels: int, image_size: int, head_sizes: tuple[int, ...], width: int = 32) -> None:
        super().__init__()
        self.config = {"channels": channels, "image_size": image_size, "head_sizes": list(head_sizes),
                       "width": width}
        reduced = (image_size // 2) // 2  # after two 4x4 stride-2 convolutions with padding 1
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 4, 2, 1), nn.GELU(),
            nn.Flatten(), nn.Linear(2 * width * reduced * reduced, FEATURE_DIM), nn.GELU(),
        )
        self.heads = nn.ModuleList(nn.Linear(FEATURE_DIM, size) for size in head_sizes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.features(x)
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Predicted level of every target, ``[N, num_heads]``."""
        out = [torch.stack([logits.argmax(1) for logits in self(x[i:i + batch_size])], 1)
               for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def feature_batches(self, x: Tensor, batch_size: int = 256) -> Tensor:
        return torch.cat([self.features(x[i:i + batch_size]).double().cpu() for i in range(0, x.shape[0], batch_size)])


def classifier_targets(data: DataSet) -> tuple[tuple[str, ...], tuple[int, ...], Tensor, Tensor] | None:
    """(head names, head sizes, train targets ``[N, H]``, test targets) of a data set: every factor when
    it has named, sized factors, else the class label; ``None`` when it carries neither."""
    names, sizes = data.factor_names, data.factor_sizes
    if names is not None and sizes is not None and data.train.factors is not None:
        return tuple(names), tuple(sizes), data.train.factors, data.test.factors
    if data.train.labels is not None and data.test.labels is not None:
        classes = data.num_classes or int(data.train.labels.max()) + 1
        return ("label",), (int(classes),), data.train.labels[:, None], data.test.labels[:, None]
    return None


def _accuracy(net: FeatureClassifier, x: Tensor, targets: Tensor) -> list[float]:
    predicted = net.predict(x)
    return (predicted == targets.to(predicted.device)).double().mean(0).tolist()


def train_classifier(data: DataSet, *, iterations: int = 1000, batch_size: int = 64, learning_rate: float = 2e-3,
                     seed: int = 0, device: torch.device | str = "cpu") -> tuple[FeatureClassifier, dict[str, Any]]:
    """Train on ``data.train`` (cross-entropy summed over heads, Adam) and report test accuracy."""
    found = classifier_targets(data)
    if found is None:
        raise UserError(f"data set {data.name} carries no labels or factors; "
                        "no classifier can be trained for its Fréchet distance")
    names, sizes, train_targets, test_targets = found
    channels, image_size, _ = data.data_shape
    torch.manual_seed(seed)
    net = FeatureClassifier(channels, image_size, sizes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = data.train.x.to(device), train_targets.to(device)
    for _ in range(iterations):
        idx = torch.randint(0, x_train.shape[0], (batch_size,), generator=generator).to(device)
        logits = net(x_train[idx])
        loss = sum(F.cross_entropy(out, y_train[idx, h]) for h, out in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    accuracy = _accuracy(net, data.test.x.to(device), test_targets)
    info = {"heads": list(names), "test_accuracy": dict(zip(names, accuracy)), "iterations": iterations,
            "data": data.name, "data_shape": list(data.data_shape)}
    return net, info


def save_classifier(net: FeatureClassifier, info: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"config": net.config, "state_dict": net.state_dict(), "info": info}, path)


def load_classifier(path: Path, data_shape: tuple[int, ...], device: torch.device | str = "cpu"
                    ) -> tuple[FeatureClassifier, dict[str, Any]]:
    """The classifier saved at ``path`` (loaded by :func:`~inferkit.runs.load_plain`: a file holding
    Python objects is refused, nothing in it run), checked against ``data_shape``."""
    saved = load_plain(path, "cpu", what="classifier file", hint="delete it to retrain")
    try:
        config = saved["config"]
        net = FeatureClassifier(config["channels"], config["image_size"], tuple(config["head_sizes"]),
                                config["width"])
        net.load_state_dict(saved["state_dict"])
    except Exception as exc:  # noqa: BLE001 - an unreadable file is the user's to fix
        raise UserError(f"classifier file {path} cannot be read ({type(exc).__name__}); delete it to retrain") from None
    if [config["channels"], config["image_size"], config["image_size"]] != list(data_shape):
        raise UserError(f"classifier {path} was trained on images {saved['info'].get('data_shape')}, not "
                        f"{list(data_shape)}; give another --classifier path or delete it to retrain")
    return net.to(device).eval(), saved["info"]


def classifier_for(data: DataSet, path: Path, *, iterations: int = 1000, seed: int = 0,
                   device: torch.device | str = "cpu") -> tuple[FeatureClassifier, dict[str, Any], bool]:
    """The classifier saved at ``path`` when it fits ``data``, else a new one trained and saved there.
    Returns (network, info, whether it was trained now)."""
    path = Path(path)
    found = classifier_targets(data)
    if path.is_file():
        net, info = load_classifier(path, tuple(data.data_shape), device)
        if found is not None and list(found[0]) == info.get("heads") and info.get("data") == data.name:
            return net, info, False
    net, info = train_classifier(data, iterations=iterations, seed=seed, device=device)
    save_classifier(net, info, path)
    return net, info, True
