"""The ``xadv`` command: explain, attack, fool and detect from the shell.

``xadv demo --out DIR`` runs the whole story on the embedded digits CNN and
writes figures (PNG + PDF), ``report.md`` and ``metrics.json``. The other
sub-commands run one step each; ``xadv <command> --help`` shows its options.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

_DESCRIPTION = """\
xadv: explanations linked to adversarial attacks, from the shell.

`xadv demo --out DIR` runs the whole story on the embedded digits CNN (explain,
attack from explanations, fool explanations, detect) and writes figures (PNG +
PDF), report.md and metrics.json. The other commands run one step each;
`xadv COMMAND --help` shows their options."""

_EPILOG = """\
examples:
  xadv demo --out demo-out                 explain, attack, fool, detect on the embedded digits CNN
  xadv demo --out demo-out --fast          the same on a small setting (~20 s)
  xadv explain --model digits --method ig --index 0 --out fig.pdf
  xadv explain --model net.ts --image cat.png --size 32 --method gradcam --out cat.png
  xadv explain --model mypkg.models:resnet --weights w.pt --image x.png --method smoothgrad --out x.pdf
  xadv attack --attack pgd --eps 0.1 --steps 10 --n 128 --out attack-out
  xadv attack --attack explainer-pgd --explainer ig --eps 0.2 --out attack-out
  xadv fool --attack topk --explainer saliency --eps 0.05 --out fool-out
  xadv fool --attack targeted --target inside --eps 0.0314 --out targeted-out
  xadv detect --detector saliency --n-train 300 --out detect-out
  xadv attack --table --out tables        the full attacks table (python -m xadv.experiments.attacks)

Every command runs on the CPU unless --device is given; nothing is downloaded.
"""

_IMAGE_METHODS = ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "gradcam", "gradcam_pp",
                  "lime")
_SHORT = {"saliency": "Saliency", "input_x_gradient": "Input×Grad", "smoothgrad": "SmoothGrad",
          "integrated_gradients": "IG", "gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++", "lime": "LIME"}


# ---------------------------------------------------------------------------- helpers
def _write_text(path, text: str) -> None:
    from ._io import write_text

    write_text(path, text)


def _count(value: str) -> int:
    """argparse type for sample counts: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


class CLIError(Exception):
    """A user error: printed as one line without a traceback, exit status 2."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples as written and appends ``(default: X)`` to every option with a default."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "%(default)" in h or any(action.default is v for v in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings or isinstance(action, argparse._HelpAction):
            return h
        d = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else "%(default)s"
        return f"{h} (default: {d})"


# figure labels (what every plot and table calls a method) -> registry names
_FIGURE_NAMES = {"saliency": "saliency", "inputxgrad": "input_x_gradient", "inputxgradient": "input_x_gradient",
                 "smoothgrad": "smoothgrad", "ig": "integrated_gradients", "integratedgradients":
                 "integrated_gradients", "gradcam": "gradcam", "gradcam++": "gradcam_pp", "lime": "lime",
                 "occlusion": "occlusion", "gradientshap": "gradient_shap", "expectedgradients": "expected_gradients"}


def _squash(name: str) -> str:
    return name.lower().replace("×", "x").replace("-", "").replace("_", "").replace(" ", "")


def resolve_method(name: str) -> str:
    """The registry name of an explainer given as a registry name, an alias or a figure label.

    ``"Grad-CAM"``, ``"grad_cam"`` and ``"gradcam"`` all give ``"gradcam"``; the
    registry is read at call time, so explainers registered later are found too.

    Examples
    --------
    >>> resolve_method("Grad-CAM"), resolve_method("SmoothGrad"), resolve_method("ig")
    ('gradcam', 'smoothgrad', 'integrated_gradients')
    """
    from . import explainers as E

    names = E.names()
    low = name.lower()
    if low in names:
        return low
    if low in E._ALIASES:
        return E._ALIASES[low]
    key = _squash(name)
    table = {**{_squash(a): b for a, b in E._ALIASES.items()}, **{_squash(n): n for n in names},
             **{k: v for k, v in _FIGURE_NAMES.items() if v in names}}
    if key in table:
        return table[key]
    raise CLIError(f"unknown explainer {name!r}; choose one of {', '.join(names)}")


def _method_help() -> str:
    from . import explainers as E

    return "explainer: " + ", ".join(E.names()) + " (or an alias / figure label such as ig, Grad-CAM, SmoothGrad)"


_FIGURE_FORMATS = (".png", ".pdf", ".svg", ".eps", ".jpg", ".jpeg", ".tif", ".tiff")


def _check_figure_path(out: str) -> None:
    if Path(out).suffix.lower() not in _FIGURE_FORMATS:
        raise CLIError(f"--out {out}: cannot write a {Path(out).suffix or 'suffix-less'} figure; "
                       f"end the name with one of {', '.join(_FIGURE_FORMATS)}")


def check_device(device: str):
    """The torch device named ``device``; a CLIError when it is not available here."""
    torch = _torch()
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"--device {device!r} is not a torch device ({e}); use cpu, cuda, cuda:0 or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available in this installation; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise CLIError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def _torch():
    import torch

    return torch


def _threads(n: Optional[int]) -> None:
    torch = _torch()
    # one thread by default: the embedded model's small convolutions gain little from more threads and
    # lose a lot when the cores are shared (measured: fast demo 17 s with 1 thread vs 146 s with 2 under load)
    torch.set_num_threads(int(n) if n else 1)


def _bar(total: int, desc: str, enabled: Optional[bool]):
    """A demo stage's bar (xadv._progress: ``--no-progress``, ``XADV_PROGRESS=0`` or no terminal: none)."""
    from ._progress import bar

    return bar(total, f"{desc:<8}", progress=None if enabled else False, leave=True,
               bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}] {postfix}")


def _parse_params(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["steps=32", "noise=0.1", "seed=0"]`` -> dict with ints/floats/bools parsed."""
    out: Dict[str, Any] = {}
    for it in items or ():
        if "=" not in it:
            raise CLIError(f"--param takes key=value pairs, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def load_model(spec: str, weights: Optional[str] = None, device: str = "cpu"):
    """A model from a zoo name | a TorchScript file | ``module:factory`` (+ weights).

    Parameters
    ----------
    spec : str
        A zoo name (``digits``/``digits_cnn``, ``tabular``, ``xadv.zoo.list_models()``;
        ``weights`` replaces the shipped ones), a TorchScript file written by
        ``torch.jit.save``, or ``package.module:factory`` where ``factory()``
        returns an ``nn.Module`` (then ``weights`` is a ``state_dict`` file).
    weights : str, optional
        ``torch.save(model.state_dict(), path)`` file for ``module:factory``.
    device : str, default "cpu"
    """
    torch = _torch()
    from . import zoo

    if weights is not None and not Path(weights).is_file():
        raise CLIError(f"--weights {weights}: no such file; give a state_dict saved with "
                       f"torch.save(model.state_dict(), path)")
    name = _ZOO_ALIASES.get(spec, spec)
    if name in zoo.list_models():
        try:
            model = zoo.get_model(name, pretrained=True, weights=weights)
        except ValueError as e:
            hint = "" if weights is not None else " (train it and pass --weights FILE)"
            raise CLIError(f"--model {spec}: {e}{hint}")
        except Exception as e:  # noqa: BLE001 - unreadable weights
            raise CLIError(f"--weights {weights} is not a readable state_dict file ({type(e).__name__})")
        return model.to(device).eval()
    path = Path(spec)
    if path.is_file():
        try:
            model = torch.jit.load(str(path), map_location=device)
        except Exception as e:  # noqa: BLE001 - any load failure is reported to the user
            raise CLIError(f"{spec} is not a TorchScript file ({type(e).__name__}: {e}); save one with "
                           f"torch.jit.save(torch.jit.script(model), path), or use module:factory --weights W")
        return model.eval()
    if ":" in spec:
        mod_name, _, fn = spec.partition(":")
        sys.path.insert(0, str(Path.cwd()))
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise CLIError(f"cannot import {mod_name!r} for --model {spec}: {e}")
        finally:
            sys.path.pop(0)
        factory = getattr(mod, fn, None)
        if not callable(factory):
            raise CLIError(f"{mod_name} has no callable {fn!r}")
        model = factory()
        if not isinstance(model, torch.nn.Module):
            raise CLIError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
        if weights is not None:
            from ._io import load_state_dict_file

            try:
                state = load_state_dict_file(weights, map_location=device)  # never unpickles objects
            except (ValueError, OSError) as e:
                raise CLIError(str(e))
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise CLIError(f"weights {weights} do not fit {spec}: {e}")
        return model.to(device).eval()
    from . import zoo as _z

    raise CLIError(f"--model {spec!r}: not a zoo model ({', '.join(['digits'] + _z.list_models())}), "
                   f"not an existing TorchScript file, not 'module:factory'")


_ZOO_ALIASES = {"digits": "digits_cnn", "tabular": "tabular_mlp"}


def _is_digits(spec: str) -> bool:
    return _ZOO_ALIASES.get(spec, spec) == "digits_cnn"


def load_image(path: str, size: Optional[int] = None, channels: Optional[int] = None):
    """An image file (PNG, or JPEG with Pillow) as a (1, C, H, W) float tensor in [0, 1].

    ``size`` resizes (bilinear) to ``size x size``; ``channels`` converts to gray (1)
    or RGB (3).
    """
    import matplotlib.image as mpimg
    import numpy as np

    torch = _torch()
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"image file {path!r} does not exist")
    try:
        a = np.asarray(mpimg.imread(str(p)), dtype=np.float64)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot read {path!r} as an image: {e}")
    if a.max() > 1.0:
        a = a / 255.0
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim == 2:
        a = a[..., None]
    x = torch.as_tensor(a, dtype=torch.float32).permute(2, 0, 1)[None]
    if channels == 1 and x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif channels == 3 and x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).contiguous()


def _explainer(method: str, fast: bool = False, seed: int = 0, **over):
    from . import explainers as E

    key = resolve_method(method)
    defaults = {"smoothgrad": {"n_samples": 16 if fast else 32, "noise": 0.1, "seed": seed},
                "integrated_gradients": {"steps": 16 if fast else 32},
                "lime": {"n_samples": 100 if fast else 500, "seed": seed}}.get(key, {})
    defaults.update(over)
    return E.get(key, **defaults)


def _save_both(fig, out: Path, stem: str, formats: Sequence[str], attributions=None) -> List[str]:
    from . import plot as xp

    names = []
    for i, ext in enumerate(formats):
        p = xp.save(fig, out / f"{stem}.{ext}", attributions=attributions if i == 0 else None)
        names.append(p.name)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return names


def _jsonable(v):
    torch = _torch()
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().tolist()
    if isinstance(v, float):
        return None if math.isnan(v) else float(f"{v:.6g}")     # 6 significant digits, small values kept
    if isinstance(v, dict):
        return {str(k): _jsonable(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(w) for w in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            return _jsonable(v.item())
        except (ValueError, AttributeError):
            pass
    return v


def _digits(n: int, split: str = "test", correct_for=None, offset: int = 0, device: str = "cpu"):
    from .data import load_digits

    torch = _torch()
    x, y = load_digits(split)
    x, y = x.to(device), y.to(device)
    if correct_for is not None:
        with torch.no_grad():
            ok = correct_for(x).argmax(1) == y
        x, y = x[ok], y[ok]
    return x[offset:offset + n], y[offset:offset + n]


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _probe(model, x) -> None:
    """One forward pass on the first input: a clear error when model and data do not fit."""
    torch = _torch()
    try:
        with torch.no_grad():
            out = model(x[:1])
    except Exception as e:  # noqa: BLE001 - the user's model rejects the input; say what to change
        ch = "" if x.dim() != 4 else f" (channels {x.shape[1]}, size {x.shape[2]}x{x.shape[3]})"
        raise CLIError(f"the model does not accept inputs of shape {tuple(x.shape[1:])}{ch}: "
                       f"{type(e).__name__}: {_first_line(e)}; adjust --channels / --size or the model")
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CLIError(f"the model must return (N, K) class scores, got "
                       f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")


def _load_inputs(a, model, n: int, offset: int = 0, split: Optional[str] = None, correct: bool = True):
    """``n`` inputs and labels from the data options, starting at ``offset`` (``--index``).

    The digits model reads the embedded digits (correctly classified ones for attacks,
    ``correct=True``); any model reads ``--image`` or ``--input`` (+ ``--labels``; the
    model's predictions otherwise).
    """
    torch = _torch()
    dev = a.device
    if getattr(a, "image", None):
        size = a.size or (28 if _is_digits(a.model) else None)
        ch = a.channels or (1 if _is_digits(a.model) else None)
        x = load_image(a.image, size, ch).to(dev)
        if offset != 0:
            raise CLIError(f"--index {offset}: an --image holds one input; use --index 0 or --input tensor.pt")
        y = None
    elif getattr(a, "input", None):
        p = Path(a.input)
        if not p.is_file():
            raise CLIError(f"--input {a.input}: no such file; give a tensor (N, C, H, W) saved with torch.save")
        try:
            from ._io import load_tensor_file

            x = load_tensor_file(p, map_location=dev)  # never unpickles objects
        except ValueError:  # readable, but not one tensor (a dict, several tensors, ...)
            raise CLIError(f"--input {a.input} must hold one tensor (N, ...) saved with torch.save or safetensors")
        except Exception as e:  # noqa: BLE001 - unreadable or unsafe file
            raise CLIError(f"--input {a.input} is not a tensor file written by torch.save ({type(e).__name__})")
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise CLIError(f"--input {a.input} must hold one tensor (N, ...) saved with torch.save")
        x = x.float()
        if not 0 <= offset < len(x):
            raise CLIError(f"--index must be in [0, {len(x) - 1}] for --input {a.input} ({len(x)} inputs), "
                           f"got {offset}")
        y = None
        if getattr(a, "labels", None):
            try:
                from ._io import load_tensor_file

                y = load_tensor_file(a.labels, map_location=dev)
            except Exception as e:  # noqa: BLE001
                raise CLIError(f"--labels {a.labels} is not a tensor file written by torch.save "
                               f"({type(e).__name__})")
            if not isinstance(y, torch.Tensor) or y.shape != (len(x),):
                raise CLIError(f"--labels must hold a LongTensor of shape ({len(x)},) for --input {a.input}")
            y = y.long()[offset:offset + n]
        x = x[offset:offset + n]
        if getattr(a, "size", None) and x.dim() == 4:
            x = torch.nn.functional.interpolate(x, size=(a.size, a.size), mode="bilinear", align_corners=False)
    elif _is_digits(a.model):
        from .data import load_digits

        split = split or getattr(a, "split", "test")
        xs, ys = load_digits(split)
        xs, ys = xs.to(dev), ys.to(dev)
        if correct:
            with torch.no_grad():
                ok = model(xs).argmax(1) == ys
            xs, ys = xs[ok], ys[ok]
        if not 0 <= offset < len(xs):
            what = "correctly classified digits" if correct else "digits"
            raise CLIError(f"--index must be in [0, {len(xs) - 1}] for the {len(xs)} {what} of the {split} split, "
                           f"got {offset}")
        x, y = xs[offset:offset + n], ys[offset:offset + n]
    else:
        raise CLIError(f"--model {a.model} needs inputs: --image FILE (PNG/JPEG) or --input tensor.pt "
                       f"(optionally --labels labels.pt)")
    _probe(model, x)
    if y is None:
        with torch.no_grad():
            y = model(x).argmax(1)
    return x, y


def _have(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------------------- explain
def cmd_explain(a) -> int:
    from . import plot as xp

    torch = _torch()
    _check_figure_path(a.out)
    model = load_model(a.model, a.weights, a.device)
    x, _ = _load_inputs(a, model, 1, a.index, correct=False)
    params = _parse_params(a.param)
    try:
        seed = params.pop("seed", a.seed)
        e = _explainer(a.method, seed=seed, **params)(model, x, a.target)
    except (ValueError, TypeError) as err:
        raise CLIError(_first_line(err))
    probs = torch.softmax(e.output.detach().double(), 1)[0]
    pred = int(probs.argmax())
    title = f"{_SHORT.get(e.method, e.method)} · class {int(e.target[0])}"
    with xp.style(a.style, columns=1):
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(xp.COLUMN_WIDTHS[1], xp.COLUMN_WIDTHS[1] * 0.5))
        axes[0].imshow(xp.to_image(x[0]), cmap="gray" if x.shape[1] == 1 else None, vmin=0, vmax=1)
        axes[0].set_title(f"input: {pred} ({100 * float(probs[pred]):.0f}%)")
        axes[0].axis("off")
        draw = xp.overlay if a.overlay else xp.heatmap
        draw(e, ax=axes[1], colorbar=True, title=title, percentile=a.percentile)
        out = xp.save(fig, a.out, attributions=e if a.npz else None)
        plt.close(fig)
    print(f"wrote {out}" + (f" and {out.with_suffix('.npz')}" if a.npz else ""))
    print(f"predicted class {pred} (p={float(probs[pred]):.3f}); explained class {int(e.target[0])}")
    return 0


# ---------------------------------------------------------------------------- attack / fool / detect
def _l0_budget(eps: float) -> Dict[str, Any]:
    if eps >= 1 and float(eps).is_integer():
        return {"k": int(eps)}
    if 0 < eps < 1:
        return {"fraction": float(eps)}
    raise CLIError(f"--eps {eps:g} for deletion is a number of pixels (an integer >= 1) or a fraction in (0, 1)")


# What every attack of `xadv attack` takes. An option outside `norms`, or --eps / --steps for an attack
# without a budget / iterations, is refused (exit 2) instead of ignored. `build(a, eps, norm, steps)` gets
# eps/steps as given or None (the attack's own default). New attacks: one row here.
_ATTACKS: Dict[str, Dict[str, Any]] = {
    "fgsm": {"norms": ("linf", "l2"), "eps": True, "steps": False,
             "build": lambda A, a, eps, norm, steps: A.FGSM(**_kw(eps=eps)) if norm == "linf" else
             A.ProjectedGradient(None, norm="l2", eps=0.5 if eps is None else eps, steps=1,
                                 step_size=0.5 if eps is None else eps)},
    "rfgsm": {"norms": ("linf",), "eps": True, "steps": True,
              "build": lambda A, a, eps, norm, steps: A.RFGSM(seed=a.seed, **_kw(eps=eps, steps=steps))},
    "pgd": {"norms": ("linf", "l2", "l0"), "eps": True, "steps": True,
            "build": lambda A, a, eps, norm, steps: A.PGD(norm=norm, seed=a.seed, **_kw(eps=eps, steps=steps))},
    "explainer-pgd": {"norms": ("linf", "l2", "l0"), "eps": True, "steps": True,
                      "build": lambda A, a, eps, norm, steps: A.ExplainerPGD(
                          _explainer(a.explainer, fast=True, seed=a.seed), norm=norm, seed=a.seed,
                          **_kw(eps=eps, steps=steps))},
    "apgd": {"norms": ("linf", "l2"), "eps": True, "steps": True,
             "build": lambda A, a, eps, norm, steps: A.APGD(norm=norm, seed=a.seed, **_kw(eps=eps, steps=steps))},
    "apgd-t": {"norms": ("linf", "l2"), "eps": True, "steps": True,
               "build": lambda A, a, eps, norm, steps: A.APGDT(norm=norm, seed=a.seed, **_kw(eps=eps, steps=steps))},
    # --steps x 50 Square queries
    "square": {"norms": ("linf", "l2"), "eps": True, "steps": True,
               "build": lambda A, a, eps, norm, steps: A.Square(
                   norm=norm, seed=a.seed, **_kw(eps=eps, n_queries=None if steps is None else max(steps, 1) * 50))},
    "autoattack": {"norms": ("linf", "l2"), "eps": True, "steps": True,
                   "build": lambda A, a, eps, norm, steps: A.AutoAttack(
                       norm=norm, seed=a.seed, **_kw(eps=eps, steps=steps,
                                                     n_queries=None if steps is None else max(steps, 1) * 50))},
    "deepfool": {"norms": ("l2",), "eps": False, "steps": True,
                 "build": lambda A, a, eps, norm, steps: A.DeepFool(**_kw(steps=steps))},
    "cw": {"norms": ("l2",), "eps": False, "steps": True,
           "build": lambda A, a, eps, norm, steps: A.CarliniWagnerL2(steps=20 if steps is None else steps,
                                                                     binary_search_steps=3, lr=0.05)},
    "deletion": {"norms": ("l0",), "eps": True, "steps": True,
                 "build": lambda A, a, eps, norm, steps: A.DeletionAttack(
                     _explainer(a.explainer, fast=True, seed=a.seed),
                     **({"k": 50} if eps is None else _l0_budget(eps)), **_kw(steps=steps))},
}


def _kw(**kw) -> Dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _make_attack(name: str, a):
    from . import attacks as A

    n = name.lower().replace("_", "-")
    spec = _ATTACKS.get(n)
    if spec is None:
        raise CLIError(f"unknown attack {name!r}; choose one of {', '.join(_ATTACKS)}")
    norm = a.norm or spec["norms"][0]
    if norm not in spec["norms"]:
        raise CLIError(f"--attack {n} runs in {' / '.join(spec['norms'])} only, not --norm {norm}; "
                       f"drop --norm or use --attack pgd --norm {norm}")
    if a.eps is not None and not spec["eps"]:
        raise CLIError(f"--attack {n} finds the smallest perturbation and has no budget; drop --eps "
                       f"(the perturbation norms are in metrics.json) or use --attack pgd")
    if a.steps is not None and not spec["steps"]:
        raise CLIError(f"--attack {n} is a single step; drop --steps or use --attack pgd / rfgsm")
    return spec["build"](A, a, a.eps, norm, a.steps)


def cmd_attack(a) -> int:
    if a.table:
        from .experiments import attacks as ex

        argv = (["--out", a.out] if a.out else []) + ["--n", str(a.n), "--seed", str(a.seed), "--progress"]
        if "model" in a._given:
            name = _ZOO_ALIASES.get(a.model, a.model)
            if name not in ex.MODELS:
                raise CLIError(f"--table runs the attacks experiment on {', '.join(ex.MODELS)} only, "
                               f"not --model {a.model}")
            argv += ["--model", name]
        if "threads" in a._given:
            argv += ["--threads", str(a.threads)]
        return ex.main(argv)
    from . import plot as xp

    atk = _make_attack(a.attack, a)
    model = load_model(a.model, a.weights, a.device)
    x, y = _load_inputs(a, model, a.n, a.index)
    try:
        res = atk(model, x, y)
    except (ValueError, TypeError) as err:
        raise CLIError(_first_line(err))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summ = res.summary()
    ex = _explainer(a.explainer, fast=True, seed=a.seed)
    k = min(4, len(x))
    with xp.style("paper", columns=2):
        eb, ea = ex(model, res.x[:k], res.y[:k]), ex(model, res.x_adv[:k], res.y[:k])
        figs = _save_both(xp.attack_grid(res[:k], eb, ea, n=k), out, "attack", a.formats,
                          attributions={"before": eb, "after": ea})
    res.save(out / "attack_result.pt")
    _write_text(out / "metrics.json", json.dumps(_jsonable({"attack": repr(atk), **summ}), indent=1))
    print(f"{atk!r}: success rate {summ['success_rate']:.3f} on {len(x)} inputs; wrote {', '.join(figs)}")
    return 0


def _make_fooling(name: str, a, model=None, x=None, y=None):
    from . import fooling as Fo

    name = name.lower().replace("_", "-")
    ex = _explainer(a.explainer, fast=True, seed=a.seed)
    if name == "targeted":
        # Dombrowski et al.: a map inside the budget (reachable) or another digit's map (of another class)
        if a.target == "inside":
            target = Fo.reachable_target(model, ex, x, a.eps, seed=a.seed + 1)
        else:
            other = [next((j % len(y) for j in range(i + 1, i + len(y)) if y[j % len(y)] != y[i]), i)
                     for i in range(len(y))]
            target = ex(model, x[other])
        kw = {} if a.steps is None else {"steps": a.steps}
        return Fo.TargetedManipulation(target, explainer=ex, eps=a.eps, seed=a.seed, **kw)
    cls = {"topk": Fo.TopKAttack, "mass-center": Fo.MassCenterAttack, "random-sign": Fo.RandomSignAttack}.get(name)
    if cls is None:
        raise CLIError(f"unknown fooling attack {name!r}")
    return cls(ex, eps=a.eps, steps=60 if a.steps is None else a.steps, seed=a.seed)


def cmd_fool(a) -> int:
    if not _have("xadv.fooling"):
        raise CLIError("xadv.fooling is not available in this installation")
    if not a.table and {"sections", "explainers"} & a._given:
        raise CLIError("--sections and --explainers apply to --table only")
    if a.table:
        if not _have("xadv.experiments.fooling"):
            raise CLIError("the fooling experiment (xadv.experiments.fooling) is not available")
        from .experiments import fooling as ex

        argv = ["--out", a.out] if a.out else []
        for opt in ("n", "steps", "seed", "threads"):
            if opt in a._given:
                argv += [f"--{opt}", str(getattr(a, opt))]
        if "sections" in a._given:
            argv += ["--sections", *a.sections]
        if "explainers" in a._given:
            argv += ["--explainers", *a.explainers]
        if "n" in a._given:
            argv += ["--n-heavy", str(a.n)]
        return ex.main(argv + ["--no-strength"] if "steps" in a._given else argv)
    from . import plot as xp

    if a.attack != "targeted" and "target" in a._given:
        raise CLIError(f"--target applies to --attack targeted only; drop it for --attack {a.attack}")
    model = load_model(a.model, a.weights, a.device)
    x, y = _load_inputs(a, model, a.n, a.index)
    try:
        res = _make_fooling(a.attack, a, model, x, y)(model, x, y)
    except (ValueError, TypeError) as err:
        raise CLIError(_first_line(err))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with xp.style("paper", columns=2):
        figs = _save_both(xp.fooling_grid(res, n=min(4, len(x))), out, "fooling", a.formats,
                          attributions={"before": res.explanation_clean, "after": res.explanation_adv})
    res.save(out / "fooling_result.pt")
    summ = res.summary()
    summ["n"] = int(summ["n"])
    if "target_mse_before" in res.extras:
        b, af = res.extras["target_mse_before"].mean(), res.extras["target_mse_after"].mean()
        summ.update(target_mse_before=float(b), target_mse_after=float(af), target_mse_factor=float(b / af),
                    output_mse=float(res.extras["output_mse"].mean()))
    _write_text(out / "metrics.json", json.dumps(_jsonable({"attack": res.attack, **summ}), indent=1))
    print(xp.to_markdown([summ]))
    print(f"wrote {', '.join(figs)}")
    return 0


_DETECTORS = {
    "saliency": lambda s: ("SaliencyDetector", {"explainer": "saliency", "epochs": 20, "seed": s}),
    "xensemble": lambda s: ("XEnsemble", {"epochs": 20, "seed": s}),
    "ml-loo": lambda s: ("LOODetector", {"patch": 7, "seed": s}),
    "shap-signature": lambda s: ("ShapSignatureDetector", {"estimator": "ig", "seed": s}),
    "autoencoder": lambda s: ("ExplanationAutoencoder", {"epochs": 60, "seed": s}),
    "mahalanobis": lambda s: ("MahalanobisDetector", {"seed": s}),
    "kdbu": lambda s: ("KDBUDetector", {"seed": s}),
}


def _detect_setup(names: Sequence[str], seed: int, eps: float):
    from . import attacks as A
    from . import detectors as D

    dets = {}
    for nm in names:
        if nm not in _DETECTORS:
            raise CLIError(f"unknown detector {nm!r}; choose from {', '.join(_DETECTORS)}")
        cls, kw = _DETECTORS[nm](seed)
        dets[nm] = getattr(D, cls)(**kw)
    train = {("PGD", f"eps={eps:g}"): A.PGD(eps=eps, steps=10, seed=seed)}
    test = {("FGSM", f"eps={eps / 2:g}"): A.FGSM(eps=eps / 2), ("FGSM", f"eps={eps:g}"): A.FGSM(eps=eps),
            ("PGD", f"eps={eps / 2:g}"): A.PGD(eps=eps / 2, steps=10, seed=seed + 1),
            ("PGD", f"eps={eps:g}"): A.PGD(eps=eps, steps=10, seed=seed + 1)}
    return dets, train, test


def cmd_detect(a) -> int:
    if not _have("xadv.detectors"):
        raise CLIError("xadv.detectors is not available in this installation")
    if a.table:
        from .experiments import detection as ex

        return ex.main(["--progress"] + (["--out", str(a.out)] if a.out else []))
    from . import detectors as D
    from . import plot as xp

    torch = _torch()
    model = load_model(a.model, a.weights, a.device)
    dets, train, test = _detect_setup(a.detector, a.seed, a.eps)
    if a.input or a.image:
        x, y = _load_inputs(a, model, a.n_train + a.n_test, a.index)
        if len(x) < a.n_train + a.n_test:
            raise CLIError(f"--input holds {len(x)} inputs from --index {a.index}, fewer than --n-train {a.n_train} "
                           f"+ --n-test {a.n_test}; lower them or give more inputs")
        g = torch.Generator().manual_seed(a.seed)
        perm = torch.randperm(len(x), generator=g).to(x.device)
        tr, te = perm[:a.n_train], perm[a.n_train:]
        train_set, test_set = (x[tr], y[tr]), (x[te], y[te])
    else:
        xtr, ytr = _load_inputs(a, model, 10 ** 9, 0, split="train", correct=False)
        xte, yte = _load_inputs(a, model, 10 ** 9, 0, split="test", correct=False)
        g = torch.Generator().manual_seed(a.seed)
        itr = torch.randperm(len(xtr), generator=g)[:a.n_train].to(xtr.device)
        ite = torch.randperm(len(xte), generator=g)[:a.n_test].to(xte.device)
        train_set, test_set = (xtr[itr], ytr[itr]), (xte[ite], yte[ite])
    try:
        rep = D.evaluate(dets, model, train_set, test_set, train_attacks=train, test_attacks=test, progress=None)
    except (ValueError, TypeError) as err:
        raise CLIError(_first_line(err))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with xp.style("paper", columns=1):
        figs = _save_both(xp.roc_curve(rep, log_fpr=True), out, "roc", a.formats)
    rep.save(out / "detection_report.pt")
    _write_text(out / "metrics.json", json.dumps(_jsonable({"rows": rep.rows}), indent=1))
    print(D.to_markdown(rep))
    print(f"wrote {', '.join(figs)}")
    return 0


# ---------------------------------------------------------------------------- demo
class _Demo:
    """The demo pipeline; each stage adds figures, report sections and metrics."""

    def __init__(self, out: Path, fast: bool, seed: int, formats: Sequence[str], progress: bool, device: str,
                 folder=None):
        from .zoo import digits_cnn

        self.out, self.fast, self.seed, self.formats, self.progress = out, fast, seed, formats, progress
        self.device = device
        self.model = digits_cnn().to(device)
        self.metrics: Dict[str, Any] = {"setting": {"fast": fast, "seed": seed, "model": "xadv.zoo.digits_cnn",
                                                    "data": "xadv.data.load_digits('test')"}}
        self.report: List[str] = []
        self.figures: List[str] = []
        self.skipped: Dict[str, str] = {}
        self.seconds: Dict[str, float] = {}
        self.latex: List[str] = []
        self.resumed: List[str] = []
        self.folder = folder
        n_pool = 512
        self.x, self.y = _digits(n_pool, correct_for=self.model, device=device)

    # sizes: (full, fast)
    def size(self, full: int, fast: int) -> int:
        return fast if self.fast else full

    def fig(self, fig, stem: str, attributions=None) -> List[str]:
        names = _save_both(fig, self.out, stem, self.formats, attributions)
        self.figures += names
        return names

    def _img(self, names: List[str], alt: str) -> str:
        png = [n for n in names if n.endswith(".png")]
        other = [n for n in names if not n.endswith(".png")]
        s = f"![{alt}]({png[0]})" if png else ""
        if other:
            s += "  \n" + " · ".join(f"[{n}]({n})" for n in other)
        return s

    # ------------------------------------------------------------ explain
    def explain(self) -> None:
        from . import explainers as E
        from . import plot as xp
        from .metrics import deletion_curve, insertion_curve, curve_auc

        methods = [m for m in _IMAGE_METHODS if m in E.names()]
        missing = [m for m in _IMAGE_METHODS if m not in E.names()]
        n_show, n_eval = 4, self.size(64, 8)
        x, y = self.x[:n_eval], self.y[:n_eval]
        rows, shown, curves_d, curves_i = [], {}, {}, {}
        bar = _bar(len(methods), "explain", self.progress)
        for m in methods:
            ex = _explainer(m, self.fast, self.seed)
            t0 = time.perf_counter()
            xx = x[: self.size(16, 4)] if m == "lime" else x
            e = ex(self.model, xx, y[: len(xx)])
            dt = time.perf_counter() - t0
            f, sd = deletion_curve(self.model, xx, e, steps=20)
            _, si = insertion_curve(self.model, xx, e, steps=20, fill="zeros")
            curves_d[_SHORT[m]], curves_i[_SHORT[m]] = sd, si
            ff = f.detach().cpu().numpy()
            rows.append({"method": _SHORT[m], "n": len(xx), "ms_per_image": 1000 * dt / len(xx),
                         "deletion_auc": float(curve_auc(f, sd.mean(0))),
                         "insertion_auc": float(curve_auc(f, si.mean(0)))})
            shown[_SHORT[m]] = e[:n_show]
            bar.set_postfix_str(m)
            bar.update(1)
        bar.close()
        with xp.style("paper", columns=2):
            names = self.fig(xp.explanation_grid(shown, n=n_show, share="none"), "explanations", attributions=shown)
        with xp.style("paper", columns=2):
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(2, 1, figsize=(xp.COLUMN_WIDTHS[2] * 0.75, xp.COLUMN_WIDTHS[2] * 0.8))
            xp.deletion_curve(ff, curves_d, kind="deletion", ax=axes[0])
            xp.deletion_curve(ff, curves_i, kind="insertion", ax=axes[1])
            fig.tight_layout()
            names_c = self.fig(fig, "deletion_insertion")
        self.metrics["explain"] = {"rows": rows}
        self.latex.append(xp.to_latex(rows, best={"deletion_auc": "min", "insertion_auc": "max"},
                                      caption="Explainers on the digits CNN: deletion / insertion AUC",
                                      label="tab:explain"))
        self.report += [
            "## 1. Explanations\n",
            f"Every image explainer on {n_eval} correctly classified test digits (LIME on "
            f"{self.size(16, 4)}), explaining the true class. Signed maps: red = evidence for the class, "
            "blue = against, white = zero; absolute maps (saliency, SmoothGrad, Grad-CAM) white to red. Each map "
            "on its own scale (99.5th percentile of |map|).\n",
            self._img(names, "explanations"), "",
            "Deletion: the class probability as the most attributed pixels are set to 0 (lower area = more "
            "faithful); insertion: as they are restored into a black image (higher is better). Bands: standard error over images.\n",
            self._img(names_c, "deletion and insertion curves"), "",
            xp.to_markdown(rows, best={"deletion_auc": "min", "insertion_auc": "max"}, digits=3), "",
        ]
        if missing:
            self.skipped["explain: " + ", ".join(missing)] = "explainer not registered in this installation"
        self.explanations = shown

    # ------------------------------------------------------------ attack
    def attack(self) -> None:
        from . import attacks as A
        from . import plot as xp

        n = self.size(128, 16)
        x, y = self.x[:n], self.y[:n]
        budgets = [0.05, 0.1, 0.15, 0.2, 0.3] if not self.fast else [0.1, 0.2]
        steps = self.size(10, 5)
        makers: Dict[str, Callable[[float], Any]] = {
            "FGSM": lambda e: A.FGSM(eps=e),
            f"PGD-{steps}": lambda e: A.PGD(eps=e, steps=steps, seed=self.seed),
            f"ExplainerPGD[IG]-{steps}": lambda e: A.ExplainerPGD(
                _explainer("ig", True, self.seed, steps=8, score="log_softmax"), eps=e, steps=steps, seed=self.seed),
            f"ExplainerPGD[Grad-CAM]-{steps}": lambda e: A.ExplainerPGD(
                _explainer("gradcam", relu=False, score="log_softmax"), eps=e, steps=steps, seed=self.seed),
        }
        ks = [10, 25, 50, 100] if not self.fast else [25, 100]
        bar = _bar(len(makers) * len(budgets) + 2, "attack", self.progress)
        rates: Dict[str, List[float]] = {k: [] for k in makers}
        rows = []
        keep = None
        for name, mk in makers.items():
            for eps in budgets:
                res = mk(eps)(self.model, x, y)
                rates[name].append(res.success_rate)
                s = res.summary()
                rows.append({"attack": name, "eps": eps, "success_rate": res.success_rate,
                             "mean_l2_success": s.get("mean_l2_success"), "mean_queries": s.get("mean_queries")})
                if name.startswith("PGD") and abs(eps - 0.2) < 1e-9:
                    keep = res
                bar.set_postfix_str(f"{name} ε={eps}")
                bar.update(1)
        # feature deletion guided by explanations (an L0 attack)
        dele = {}
        for m in ("saliency", "integrated_gradients"):
            curve = A.DeletionAttack(_explainer(m, True, self.seed), fill="zeros").success_vs_k(self.model, x, y, ks)
            dele[_SHORT[m]] = curve["success_rate"]
            bar.update(1)
        bar.close()
        with xp.style("paper", columns=1):
            names_s = self.fig(xp.success_curve(budgets, rates, norm="linf"), "attack_success")
        with xp.style("paper", columns=1):
            names_d = self.fig(xp.budget_curve(ks, dele, key="success_rate", xlabel="pixels deleted (k)",
                                               ylabel="attack success rate", ylim=(-0.02, 1.02)),
                               "deletion_attack")
        ig = _explainer("ig", True, self.seed)
        k = 4
        eb = ig(self.model, keep.x[:k], keep.y[:k])
        ea = ig(self.model, keep.x_adv[:k], keep.y[:k])
        with xp.style("paper", columns=2):
            names_g = self.fig(xp.attack_grid(keep[:k], eb, ea, n=k), "attack_examples",
                               attributions={"before": eb, "after": ea})
        self.latex.append(xp.to_latex([{"attack": kk, **{f"eps={b:g}": v for b, v in zip(budgets, vs)}}
                                       for kk, vs in rates.items()],
                                      caption="Attack success rate vs L-inf budget", label="tab:attack"))
        self.metrics["attack"] = {"n": n, "budgets": budgets, "success_rate": rates,
                                  "deletion_k": ks, "deletion_success_rate": dele, "rows": rows}
        self.report += [
            "## 2. Attacks from explanations\n",
            f"{n} correctly classified test digits, L∞ budgets {budgets}. `ExplainerPGD` steps along the "
            "reversed explanation of the true class instead of the loss gradient; `DeletionAttack` sets the "
            "k most attributed pixels to 0.\n",
            self._img(names_s, "success vs budget"), "", self._img(names_d, "deletion attack"), "",
            f"PGD-{steps} at ε=0.2: input, adversarial input, perturbation (amplified), IG of the true class "
            "before and after (one colour scale for both).\n",
            self._img(names_g, "attack examples"), "",
            xp.to_markdown([{"attack": kk, **{f"ε={b:g}": v for b, v in zip(budgets, vs)}}
                            for kk, vs in rates.items()]), "",
            xp.to_markdown([{"explainer": kk, **{f"k={b}": v for b, v in zip(ks, vs)}}
                            for kk, vs in dele.items()]), "",
        ]

    # ------------------------------------------------------------ fool
    def fool(self) -> None:
        from . import fooling as Fo
        from . import plot as xp

        n = self.size(16, 3)
        x, y = self.x[:n], self.y[:n]
        steps = self.size(60, 10)
        budgets = [0.02, 0.05, 0.1] if not self.fast else [0.05]
        targets = {"Saliency": _explainer("saliency")}
        if not self.fast:
            targets["IG"] = _explainer("ig", True, self.seed, steps=8)
        bar = _bar(len(targets) * len(budgets), "fool", self.progress)
        curves: Dict[str, List[float]] = {}
        rows, keep = [], None
        for name, ex in targets.items():
            curves[name] = []
            for eps in budgets:
                res = Fo.TopKAttack(ex, eps=eps, steps=steps, k=0.1, seed=self.seed)(self.model, x, y)
                s = res.summary()
                ti = s.get("topk_intersection", float("nan"))
                curves[name].append(ti)
                rows.append({"explainer": name, "eps": eps, "kept_rate": s["kept_rate"],
                             **{kk: v for kk, v in s.items() if kk not in ("n", "kept_rate")}})
                if name == "Saliency" and (keep is None or eps == 0.05):
                    keep = res
                bar.set_postfix_str(f"{name} ε={eps}")
                bar.update(1)
        bar.close()
        with xp.style("paper", columns=2):
            names_g = self.fig(xp.fooling_grid(keep, n=min(4, n)), "fooling_examples",
                               attributions={"before": keep.explanation_clean, "after": keep.explanation_adv})
        names_c = []
        if len(budgets) > 1:
            with xp.style("paper", columns=1):
                names_c = self.fig(xp.fooling_curve(budgets, curves, key="topk_intersection",
                                                    ylabel="top-10% intersection", xlabel="budget ε (L∞)"),
                                   "fooling_vs_budget")
        self.metrics["fool"] = {"n": n, "budgets": budgets, "topk_intersection": curves, "rows": rows}
        cols = ["explainer", "eps", "kept_rate"] + [c for c in ("topk_intersection", "spearman", "ssim", "mean_linf")
                                                    if c in rows[0]]
        self.report += [
            "## 3. Fooling explanations\n",
            f"TopKAttack (Ghorbani et al., 2019) on {n} digits, {steps} steps: move the attribution mass off the "
            "top-10% pixels while the prediction stays the same. Lower top-k intersection = more fooled. "
            "The examples show Saliency at ε=0.05; the last column is the change of the map (after − before, "
            "each map scaled to unit maximum).\n",
            self._img(names_g, "fooling examples"), "",
            *( [self._img(names_c, "fooling vs budget"), ""] if names_c else []),
            xp.to_markdown(rows, columns=cols), "",
        ]

    # ------------------------------------------------------------ detect
    def detect(self) -> None:
        from . import detectors as D
        from . import plot as xp
        from .data import load_digits

        torch = _torch()
        names = ["saliency", "ml-loo"] if not self.fast else ["saliency"]
        dets, train, test = _detect_setup(names, self.seed, 0.2)
        for d in dets.values():
            if hasattr(d, "epochs"):
                d.epochs = self.size(20, 5)
        xtr, ytr = load_digits("train")
        xte, yte = load_digits("test")
        g = torch.Generator().manual_seed(self.seed)
        itr = torch.randperm(len(xtr), generator=g)[: self.size(300, 60)]
        ite = torch.randperm(len(xte), generator=g)[: self.size(150, 30)]
        bar = _bar(1, "detect", self.progress)
        rep = D.evaluate(dets, self.model, (xtr[itr].to(self.device), ytr[itr].to(self.device)),
                         (xte[ite].to(self.device), yte[ite].to(self.device)), train_attacks=train,
                         test_attacks=test, progress=False)
        bar.update(1)
        bar.close()
        with xp.style("paper", columns=1):
            names_r = self.fig(xp.roc_curve(rep, log_fpr=True), "detection_roc")
        cols = ["detector", "attack", "budget", "held_out", "auroc", "tpr_at_5fpr", "accuracy"]
        self.metrics["detect"] = {"rows": rep.rows, "n_train": len(itr), "n_test": len(ite)}
        self.report += [
            "## 4. Detecting adversarial inputs with explanations\n",
            f"Detectors fitted on PGD (ε=0.2) examples of {len(itr)} training digits, evaluated on {len(ite)} "
            "test digits against FGSM and PGD, at the seen and a held-out budget (`held_out`). "
            "AUROC: adversarial = positive. The ROC axis is logarithmic in the false positive rate, "
            "where a detector is used (TPR at 1% and 5% FPR).\n",
            self._img(names_r, "ROC curves"), "",
            xp.to_markdown(rep.rows, columns=[c for c in cols if c in rep.rows[0]]), "",
        ]

    # ------------------------------------------------------------ run
    STAGES = ("explain", "attack", "fool", "detect")

    def _files(self) -> Dict[str, tuple]:
        """(inode, mtime, size) of every file in the folder: atomic writes give a new inode per write."""
        out = {}
        for p in self.out.rglob("*"):
            if p.is_file() and not p.name.endswith(".tmp"):
                st = p.stat()
                out[p.relative_to(self.out).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return out

    def _stage_key(self) -> Dict[str, Any]:
        return {"formats": list(self.formats), "device": str(self.device)}

    def _run_stage(self, st: str) -> None:
        """Run one stage, or reuse it from the folder's manifest when it finished there before."""
        folder = self.folder
        rec = folder.completed(st, self._stage_key()) if folder is not None else None
        if rec is not None:
            self.report += rec["report"]
            self.latex += rec["latex"]
            self.figures += rec["figures"]
            self.skipped.update(rec["skipped"])
            self.metrics[st] = rec["metrics"]
            self.seconds[st] = rec["seconds"]
            self.resumed.append(st)
            return
        if folder is not None and st in folder.done:
            folder.forget_stage(st)  # files missing or changed: redo it
        n_report, n_latex, n_fig, skipped = len(self.report), len(self.latex), len(self.figures), dict(self.skipped)
        before = self._files()
        # every stage starts from its own seed, so a stage gives the same numbers whether or not
        # the stages before it ran in this process (resume) or at all (--stages)
        torch = _torch()
        torch.manual_seed(self.seed * 7919 + self.STAGES.index(st))
        t0 = time.perf_counter()
        getattr(self, st)()
        self.seconds[st] = round(time.perf_counter() - t0, 1)
        if folder is not None:
            after = self._files()
            written = sorted(k for k, v in after.items() if before.get(k) != v and not k.startswith(".")
                             and k != folder.MANIFEST)
            record = {"report": self.report[n_report:], "latex": self.latex[n_latex:],
                      "figures": self.figures[n_fig:], "metrics": _jsonable(self.metrics.get(st)),
                      "skipped": {k: v for k, v in self.skipped.items() if k not in skipped},
                      "seconds": self.seconds[st]}
            folder.mark(st, files=written, record=record, key=self._stage_key())

    def run(self, stages: Sequence[str]) -> Dict[str, Any]:
        available = {"explain": "xadv.explainers", "attack": "xadv.attacks", "fool": "xadv.fooling",
                     "detect": "xadv.detectors"}
        t_all = time.perf_counter()
        for st in stages:
            if not _have(available[st]):
                self.skipped[st] = f"{available[st]} is not part of this installation"
                continue
            self._run_stage(st)
        self.seconds["total"] = round(time.perf_counter() - t_all, 1)
        self.metrics["seconds"] = self.seconds
        self.metrics["skipped"] = self.skipped
        self.metrics["figures"] = self.figures
        self.metrics["resumed"] = self.resumed
        head = [
            "# xadv demo\n",
            f"Embedded digits CNN (`xadv.zoo.digits_cnn`), scikit-learn digits at 28×28 "
            f"({'fast setting' if self.fast else 'full setting'}, seed {self.seed}). "
            f"Run time {self.seconds['total']:.0f} s on {_torch().get_num_threads()} thread(s), "
            f"{platform.processor() or platform.machine()}. Numbers are in `metrics.json`; every figure is "
            "also a PDF with embedded fonts, and raw attributions are in the `.npz` next to it.\n",
        ]
        if self.skipped:
            head.append("Left out: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items()) + ".\n")
        if self.resumed:
            head.append(f"Reused from an earlier run into this folder (same settings, files checked by sha256): "
                        f"{', '.join(self.resumed)}; `--fresh` redoes every stage.\n")
        if self.latex:
            _write_text(self.out / "tables.tex", "% needs \\usepackage{booktabs}\n" + "\n\n".join(self.latex) + "\n")
            head.append("LaTeX (booktabs) versions of the main tables: `tables.tex`.\n")
        md = "\n".join(head + self.report) + "\n"
        _write_text(self.out / "report.md", md)
        from .plot import html_report

        html_report(md, self.out / "report.html", title="xadv demo", settings=self.metrics["setting"])
        _write_text(self.out / "metrics.json", json.dumps(_jsonable(self.metrics), indent=1) + "\n")
        return self.metrics


def cmd_demo(a) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = a.stages or ["explain", "attack", "fool", "detect"]
    demo = _Demo(out, a.fast, a.seed, a.formats, not a.no_progress, a.device, folder=getattr(a, "_folder", None))
    m = demo.run(stages)
    if m["resumed"]:
        print(f"reused the finished stages {', '.join(m['resumed'])} from {out} (--fresh redoes them)")
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'metrics.json'} and {len(m['figures'])} figure files "
          f"in {m['seconds']['total']:.0f} s")
    for k, v in m["skipped"].items():
        print(f"left out {k}: {v}")
    return 0


# ---------------------------------------------------------------------------- parser
def _model_options(sp) -> None:
    from . import zoo

    sp.add_argument("--model", default="digits", help="a zoo name (digits, " + ", ".join(zoo.list_models()) +
                    "), a TorchScript file, or package.module:factory (with --weights). RUNS CODE: "
                    "module:factory imports and calls Python code, and a TorchScript (.ts) file is a program; "
                    "use only files and modules you trust")
    sp.add_argument("--weights", help="state_dict file for module:factory or a zoo model: safetensors or "
                                      "torch.save, read without running code (torch.load(weights_only=True))")


def _data_options(sp, many: bool) -> None:
    g = sp.add_argument_group("data (the digits model reads the embedded digits; other models --image or --input)")
    g.add_argument("--image", help="an image file (PNG; JPEG with Pillow) as the input")
    g.add_argument("--input", help="a tensor (N, C, H, W) saved with torch.save")
    if many:
        g.add_argument("--labels", help="LongTensor (N,) of labels for --input (default: the model's predictions)")
    g.add_argument("--index", type=int, default=0,
                   help="first sample: index into the digits split or --input" if many else
                        "sample index in the digits split or --input")
    if not many:
        g.add_argument("--split", default="test", choices=["train", "test"], help="digits split")
    g.add_argument("--size", type=int, help="resize to SIZE x SIZE (digits images: 28)")
    g.add_argument("--channels", type=int, choices=[1, 3], help="convert an --image to gray (1) or RGB (3)")


def _common(sp, out_help="output directory") -> None:
    sp.add_argument("--out", required=True, help=out_help)
    sp.add_argument("--seed", type=int, default=0, help="random seed")
    sp.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    sp.add_argument("--threads", type=int, default=1, help="torch threads")


_FORMATS = ["png", "pdf", "svg"]
# with --table the experiment's grid is fixed: only these options apply
_TABLE_OPTIONS = {"attack": {"out", "n", "seed", "threads", "table", "model"}, "fool": {"out", "table", "threads", "n", "steps", "seed",
                                                                            "sections", "explainers"},
                  "detect": {"out", "table", "threads"}}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xadv`` command (every option with help and its default)."""
    fmt = _Formatter
    p = argparse.ArgumentParser(prog="xadv", description=_DESCRIPTION,
                                epilog=_EPILOG, formatter_class=fmt)
    from . import __version__

    p.add_argument("--version", action="version", version=f"xadv {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def parser(name, **kw):
        return sub.add_parser(name, formatter_class=fmt, allow_abbrev=False, **kw)

    d = parser("demo", help="explain, attack, fool and detect on the embedded digits CNN", description=(
        "The main job on the embedded default: every explainer, attacks from explanations, "
        "fooling explanations and explanation-based detection. Writes figures (PNG + PDF), "
        "report.md, report.html and metrics.json into --out; a progress bar per stage."),
        epilog="example:\n  xadv demo --out demo-out\n  xadv demo --out demo-out --fast --stages explain attack")
    _common(d)
    d.add_argument("--fast", action="store_true", help="small setting (~20 s): fewer images, steps and budgets")
    d.add_argument("--stages", nargs="+", choices=["explain", "attack", "fool", "detect"],
                   help="run only these stages (default: all)")
    d.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=_FORMATS, help="figure formats")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--fresh", "--force", action="store_true",
                   help="redo every stage; by default a rerun into the same --out with the same settings reuses "
                        "the stages that finished there (their files checked by sha256)")
    d.set_defaults(func=cmd_demo)

    e = parser("explain", help="explain one input of the digits model or of your own model", description=(
        "Explain one input and draw the map next to it. The figure format follows the "
        "extension of --out (.png, .pdf, .svg, .eps, .jpg, .tif)."),
        epilog=("examples:\n"
                "  xadv explain --model digits --method ig --index 0 --out fig.pdf\n"
                "  xadv explain --model digits --image my_digit.png --method Grad-CAM --out g.png\n"
                "  xadv explain --model net.ts --image cat.png --size 32 --out cat.pdf\n"
                "  xadv explain --model pkg.mod:make_net --weights w.pt --image x.png "
                "--method smoothgrad --param n_samples=50 --out x.svg"))
    _model_options(e)
    e.add_argument("--method", default="integrated_gradients", help=_method_help())
    e.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="explainer parameter, repeatable: --param steps=64 --param baseline='\"blur\"'")
    _data_options(e, many=False)
    e.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted class)")
    e.add_argument("--overlay", action="store_true", help="draw the map over the image")
    e.add_argument("--percentile", type=float, default=99.5, help="colour limit percentile of |map|")
    e.add_argument("--style", default="paper", choices=["paper", "notebook", "dark"],
                   help="figure style: paper (column width, embedded fonts), notebook (larger) or dark "
                        "(notebook sizes on black)")
    e.add_argument("--npz", action="store_true", help="also write the raw attributions next to the figure")
    _common(e, out_help="figure file (.png, .pdf, .svg, .eps, .jpg, .tif)")
    e.set_defaults(func=cmd_explain)

    at = parser("attack", help="attack a model, with or without explanations",
                description="Run one attack on correctly classified inputs; writes attack.png/.pdf "
                            "(input | adversarial | perturbation | maps), metrics.json and the result. Options an "
                            "attack does not use are refused: DeepFool and C&W have no budget (--eps), FGSM "
                            "takes no --steps, deletion is an L0 attack.",
                epilog=("examples:\n  xadv attack --attack pgd --eps 0.1 --out out\n"
                        "  xadv attack --attack fgsm --norm l2 --eps 1.0 --out out\n"
                        "  xadv attack --attack explainer-pgd --explainer ig --eps 0.2 --out out\n"
                        "  xadv attack --attack deletion --explainer saliency --eps 50 --out out"
                        "   (50 pixels; --eps 0.1 = 10% of them)\n"
                        "  xadv attack --model m.ts --input x.pt --labels y.pt --attack deepfool --out out\n"
                        "  xadv attack --table --out tables   (the full results table, minutes)\n"
                        "  xadv attack --table --model mnist_cnn_pgd --out tables   (the same on real MNIST)"))
    _model_options(at)
    at.add_argument("--attack", default="pgd", choices=list(_ATTACKS), help="attack")
    at.add_argument("--explainer", default="integrated_gradients",
                    help="explainer for explainer-pgd / deletion and for the maps in the figure")
    at.add_argument("--eps", type=float, default=None,
                    help="budget: L-inf/L2 radius (default 8/255 L-inf, 0.5 L2), pixels or a fraction for deletion "
                         "(default 50); refused by deepfool and cw")
    at.add_argument("--norm", default=None, choices=["linf", "l2", "l0"],
                    help="threat model (default: linf; l2 for deepfool/cw; l0 for deletion)")
    at.add_argument("--steps", type=int, default=None,
                    help="iterations (default: 10 for PGD, 1 for RFGSM, 50 for DeepFool, 20 for C&W); refused by fgsm")
    at.add_argument("--n", type=_count, default=64, help="number of inputs")
    _data_options(at, many=True)
    at.add_argument("--table", action="store_true", help="run xadv.experiments.attacks instead (takes --n --seed and --model "
                         "digits_cnn, mnist_cnn or mnist_cnn_pgd)")
    at.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=_FORMATS, help="figure formats")
    _common(at)
    at.set_defaults(func=cmd_attack)

    fo = parser("fool", help="change explanations while keeping the prediction",
                description="Interpretation-fooling attack; writes fooling.png/.pdf (maps before/after on one "
                            "scale, their difference), metrics.json and the result.",
                epilog="examples:\n  xadv fool --attack topk --explainer saliency --eps 0.05 --out out\n"
                       "  xadv fool --attack targeted --target inside --eps 0.0314 --out out")
    _model_options(fo)
    fo.add_argument("--attack", default="topk", choices=["topk", "mass-center", "random-sign", "targeted"],
                    help="fooling attack")
    fo.add_argument("--target", default="inside", choices=["inside", "other"],
                    help="targeted only: a map the model produces inside the eps ball, or the map of "
                         "another input of a different class")
    fo.add_argument("--explainer", default="saliency", help="differentiable explainer to fool")
    fo.add_argument("--eps", type=float, default=0.05, help="L-inf budget")
    fo.add_argument("--steps", type=int, default=None, help="attack steps (default: 60; 400 for targeted)")
    fo.add_argument("--n", type=_count, default=16, help="number of inputs")
    _data_options(fo, many=True)
    fo.add_argument("--table", action="store_true",
                    help="run xadv.experiments.fooling instead (takes --n --steps --seed --sections --explainers; "
                         "--steps skips the strength re-runs)")
    fo.add_argument("--sections", nargs="+", default=None, help="--table only: experiment sections to run")
    fo.add_argument("--explainers", nargs="+", default=None,
                    help="--table only: explainers of the input section (e.g. lrp guided_backprop)")
    fo.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=_FORMATS, help="figure formats")
    _common(fo)
    fo.set_defaults(func=cmd_fool)

    de = parser("detect", help="detect adversarial inputs from their explanations",
                description="Fit detectors on PGD examples of training inputs and evaluate them on FGSM/PGD "
                            "at the seen and a held-out budget; writes roc.png/.pdf and metrics.json. A user "
                            "model's --input is split at random into --n-train and --n-test inputs.",
                epilog="example:\n  xadv detect --detector saliency ml-loo --out out\n"
                       "  xadv detect --table --out out   (xadv.experiments.detection, with adaptive attacks)")
    _model_options(de)
    de.add_argument("--detector", nargs="+", default=["saliency"], choices=list(_DETECTORS), help="detectors")
    de.add_argument("--eps", type=float, default=0.2, help="L-inf training budget; eps/2 is the held-out one")
    de.add_argument("--n-train", type=_count, default=300, help="training inputs (clean; as many adversarial)")
    de.add_argument("--n-test", type=_count, default=150, help="test inputs")
    _data_options(de, many=True)
    de.add_argument("--table", action="store_true", help="run xadv.experiments.detection instead")
    de.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=_FORMATS, help="figure formats")
    _common(de)
    de.set_defaults(func=cmd_detect)
    _register_sweep(sub)
    return p


def _register_sweep(sub) -> None:
    """``xadv sweep ...``: parser and commands live in :mod:`xadv.sweep.cli`."""
    from .sweep.cli import register

    register(sub)


#: commands whose --out is a folder: they get a manifest and a lock (xadv._io.OutputFolder)
_FOLDER_COMMANDS = ("demo", "attack", "fool", "detect")


def _given(parser: argparse.ArgumentParser, command: str, argv: Sequence[str]) -> set:
    """Destinations of the options written on the command line (abbreviations are off)."""
    sp = parser._subparsers._group_actions[0].choices[command]
    flags = {o: act.dest for act in sp._actions for o in act.option_strings}
    return {flags[t.split("=", 1)[0]] for t in argv if t.split("=", 1)[0] in flags}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``xadv`` command."""
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    p = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(argv)
    if not getattr(a, "command", None):
        p.print_help()
        return 0
    a._given = _given(p, a.command, argv)
    _threads(getattr(a, "threads", None))
    from ._io import FolderError

    try:
        if getattr(a, "device", None) is not None:
            check_device(a.device)
        if getattr(a, "table", False):
            extra = sorted(a._given - _TABLE_OPTIONS[a.command])
            if extra:
                raise CLIError(f"--table runs a fixed experiment grid; {', '.join('--' + x.replace('_', '-') for x in extra)} "
                               f"do not apply (allowed: {', '.join('--' + x for x in sorted(_TABLE_OPTIONS[a.command]))})")
        if a.command in _FOLDER_COMMANDS and getattr(a, "out", None) and not getattr(a, "table", False):
            # (--table runs an experiment module, which takes the folder itself)
            from ._io import OutputFolder

            skip = {"out", "func", "command", "no_progress", "progress", "threads", "device", "stages", "formats",
                    "fresh", "_given"}
            settings = {k: v for k, v in sorted(vars(a).items()) if k not in skip}
            with OutputFolder(a.out, "xadv " + a.command, seed=getattr(a, "seed", None), settings=settings,
                              fresh=getattr(a, "fresh", False)) as folder:
                a._folder = folder
                return int(a.func(a) or 0)
        return int(a.func(a) or 0)
    except (CLIError, FolderError) as err:
        print(f"xadv {a.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only folder, --out naming a file, ...
        from ._io import os_error_message

        print(f"xadv {a.command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
