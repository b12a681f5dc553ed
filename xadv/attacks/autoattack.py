"""AutoAttack (Croce & Hein, 2020): an ensemble of parameter-free attacks, worst case per sample.

The attacks run one after another, each only on the points every earlier attack
left robust, so a sample counts as robust only if none of them fools it.
Standard version: APGD-CE (no restarts), APGD-T (targeted DLR towards the 9
runner-up classes), FAB-T, Square (5,000 queries). FAB-T is not part of xadv's
suite; :class:`AutoAttack` records its absence in ``extras["note"]`` (the robust
accuracy is then an upper bound on the full standard version's). The
``"rand"`` version for randomised defenses runs APGD-CE and APGD-DLR with
expectation over transformation (20 gradient samples per step).

Alongside the result, the checks of AutoAttack's ``flags_doc`` that point at an
unreliable evaluation are run and reported in ``extras["flags"]`` (and as a
:class:`GradientMaskingWarning` when ``warn=True``): Square fooling points the
white-box attacks left robust, points with exactly zero gradient, a model whose
output changes between identical calls (use ``version="rand"``), and outputs
that look like probabilities rather than logits.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .._validation import check_bounds, check_positive_int
from ..explainers.base import forward
from .apgd import APGD, APGDT
from .base import Attack, check_batch_size, AttackContext, check_nonneg, check_norm
from .square import Square

_DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
_VERSIONS = ("standard", "rand", "custom")
_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "square")


class GradientMaskingWarning(UserWarning):
    """An AutoAttack check suggests the robustness evaluation is not reliable."""


class AutoAttack(Attack):
    """AutoAttack's standard composition on xadv's attacks (worst case per sample).

    Parameters
    ----------
    norm : {"linf", "l2"}, default "linf"
    eps : float, optional
        Radius (default 8/255 Linf, 0.5 L2).
    version : {"standard", "rand", "custom"}, default "standard"
        ``"standard"``: APGD-CE, APGD-T, Square. ``"rand"``: APGD-CE and APGD-DLR
        with ``eot_iter=20`` (randomised models). ``"custom"``: ``attacks``.
    attacks : sequence of {"apgd-ce", "apgd-dlr", "apgd-t", "square"}, optional
        The attacks and their order for ``version="custom"``.
    steps : int, default 100
        APGD iterations per run.
    n_target_classes : int, default 9
        Runner-up classes tried by APGD-T.
    n_queries : int, default 5000
        Square's query budget.
    restarts : int, default 1
        Restarts of each APGD attack (Square: 1).
    eot_iter : int, optional
        Gradient samples per APGD step (default 1; 20 for ``"rand"``).
    check : bool, default True
        Run the reliability checks (two extra forward passes of the clean batch for
        the randomness check, ``check_calls`` in all).
    warn : bool, default True
        Issue a :class:`GradientMaskingWarning` per raised flag.
    bounds : (float, float), default (0, 1)
    seed : int, default 0
        Seed of every sub-attack.
    batch_size : int, optional
        Rows per model call; None = the whole batch in one call. Every pass (clean,
        steps, final evaluation) is split into chunks of at most ``batch_size`` rows;
        the result equals the unchunked one up to float rounding.
    progress : bool or None, default None
        Progress bar over the sub-attacks (None: in terminals and notebooks, see
        :func:`xadv.set_progress`).

    Returns an :class:`~xadv.results.AttackResult` (untargeted; ``y`` the true
    labels). ``extras``: ``robust_accuracy`` (after clean evaluation and after each
    attack, in order), ``fooled_by`` ((N,) index into ``extras["attacks"]``, -1 if
    robust or misclassified clean), ``per_attack`` (points fooled and queries spent
    by each), ``flags`` (list of strings), ``note``.

    References
    ----------
    Croce, Hein. Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks. ICML 2020.

    Examples
    --------
    >>> import torch, xadv.attacks
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    >>> aa = xadv.attacks.AutoAttack(eps=0.05, steps=5, n_target_classes=2, n_queries=10, warn=False)
    >>> res = aa(net, torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2]))
    >>> list(res.extras["robust_accuracy"])
    ['clean', 'apgd-ce', 'apgd-t', 'square']
    """

    supports_targeted = False
    #: each attack runs on the points left robust (per-sample runs for per-sample side inputs)
    sub_batches = True

    def __init__(self, norm: str = "linf", eps: Optional[float] = None, version: str = "standard",
                 attacks: Optional[Sequence[str]] = None, steps: int = 100, n_target_classes: int = 9,
                 n_queries: int = 5000, restarts: int = 1, eot_iter: Optional[int] = None, check: bool = True,
                 warn: bool = True, bounds: Tuple[float, float] = (0.0, 1.0), seed: int = 0,
                 batch_size: Optional[int] = None, progress: Optional[bool] = None):
        self.norm = check_norm(norm, ("linf", "l2"))
        self.eps = check_nonneg(_DEFAULT_EPS[self.norm] if eps is None else eps, "eps")
        self.batch_size = check_batch_size(batch_size)
        self.progress = progress
        if version not in _VERSIONS:
            raise ValueError(f"version must be one of {_VERSIONS}, got {version!r}")
        self.version = version
        if version == "custom":
            if not attacks:
                raise ValueError(f"version='custom' needs attacks=, a list from {_NAMES}")
            bad = [a for a in attacks if a not in _NAMES]
            if bad:
                raise ValueError(f"unknown attacks {bad}; choose from {_NAMES}")
        elif attacks is not None:
            raise ValueError("attacks= is only used with version='custom'")
        self.attacks = None if attacks is None else list(attacks)
        self.steps = check_positive_int(steps, "steps")
        self.n_target_classes = check_positive_int(n_target_classes, "n_target_classes")
        self.n_queries = check_positive_int(n_queries, "n_queries")
        self.restarts = check_positive_int(restarts, "restarts")
        self.eot_iter = None if eot_iter is None else check_positive_int(eot_iter, "eot_iter")
        self.check = bool(check)
        self.warn = bool(warn)
        self.bounds = check_bounds(bounds)
        self.seed = seed

    def attack_list(self) -> List[str]:
        """The attacks run, in order."""
        if self.version == "standard":
            return ["apgd-ce", "apgd-t", "square"]
        if self.version == "rand":
            return ["apgd-ce", "apgd-dlr"]
        return list(self.attacks)

    def build(self, name: str) -> Attack:
        """The sub-attack ``name`` with this budget."""
        eot = self.eot_iter if self.eot_iter is not None else (20 if self.version == "rand" else 1)
        kw = dict(norm=self.norm, eps=self.eps, bounds=self.bounds, seed=self.seed, batch_size=self.batch_size)
        if name in ("apgd-ce", "apgd-dlr"):
            return APGD(steps=self.steps, restarts=self.restarts, loss=name[5:], eot_iter=eot, **kw)
        if name == "apgd-t":
            return APGDT(steps=self.steps, restarts=self.restarts, n_target_classes=self.n_target_classes,
                         eot_iter=eot, **kw)
        return Square(n_queries=self.n_queries, **kw)

    def _folds_batchnorm(self) -> bool:
        return True   # APGD and Square, on the model's function

    def _attack(self, ctx: AttackContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x, y = ctx.x, ctx.y
        logits = ctx.logits
        n = ctx.n
        flags: List[str] = []
        names = self.attack_list()
        robust = logits.argmax(1) == y
        adv = x.clone()
        fooled_by = torch.full((n,), -1, dtype=torch.long, device=x.device)
        acc = {"clean": float(robust.float().mean()) if n else 0.0}
        per: Dict[str, Dict[str, Any]] = {}
        zero = torch.zeros(n, dtype=torch.bool, device=x.device)
        if self.check and n:
            flags += self._check_model(ctx, logits)
        from .._progress import bar as progress_bar

        bar = progress_bar(len(names), "AutoAttack", progress=self.progress, unit="attack")
        for j, name in enumerate(names):
            bar.update(1)
            bar.set_postfix_str(name)
            idx = robust.nonzero().squeeze(1)
            per[name] = {"fooled": 0, "queries": 0, "ran_on": int(idx.numel())}
            if idx.numel() == 0:
                acc[name] = 0.0
                continue
            ctx.counter.take()
            res = self.build(name)(ctx.model, x[idx], y[idx])
            ctx.counter.take()  # counted by the sub-attack
            ctx.queries[idx] += res.queries
            ctx.steps[idx] += res.steps
            f = idx[res.success]
            adv[f] = res.x_adv[res.success]
            robust[f] = False
            fooled_by[f] = j
            if "zero_grad" in res.extras:
                zero[idx] |= res.extras["zero_grad"]
            per[name].update(fooled=int(res.success.sum()), queries=int(res.queries.sum()))
            acc[name] = float(robust.float().mean())
        bar.close()
        if self.check and n:
            nz = int(zero.sum())
            if nz:
                flags.append(f"{nz} point(s) have an exactly zero gradient at the start of an APGD run: "
                             f"gradient-based results on them are unreliable")
            if "square" in per and per["square"]["fooled"] and len(names) > 1:
                drop = per["square"]["fooled"] / n
                if drop > 0.002:
                    flags.append(f"Square (query-only) fooled {per['square']['fooled']} point(s) the white-box "
                                 f"attacks left robust ({drop:.1%} of the batch): a sign of gradient masking; "
                                 f"run Square with more queries/restarts or an adaptive attack")
        if self.warn:
            for msg in flags:
                warnings.warn(msg, GradientMaskingWarning, stacklevel=3)
        note = ("FAB-T of AutoAttack's standard version is not included (xadv has no FAB): the robust "
                "accuracy can only be equal or higher than the full standard version's")
        return adv, {"eps": self.eps, "norm": self.norm, "attacks": names, "robust_accuracy": acc,
                     "fooled_by": fooled_by, "per_attack": per, "flags": flags,
                     "note": note if self.version == "standard" else ""}

    def _check_model(self, ctx: AttackContext, logits: torch.Tensor) -> List[str]:
        """Randomness of the output across calls and probability-like outputs."""
        flags = []
        with torch.no_grad():
            outs = [logits] + [ctx.forward(ctx.x) for _ in range(2)]
        ctx.counter.take()  # not queries of the attack
        preds_differ = any(bool((o.argmax(1) != logits.argmax(1)).any()) for o in outs[1:])
        scale = logits.reshape(-1).abs().max().clamp_min(1e-12)
        max_diff = max(float((o - logits).abs().max() / scale) for o in outs[1:])
        if self.version != "rand" and (preds_differ or max_diff > 1e-4):
            flags.append(f"the model's output changes between identical calls (relative difference "
                         f"{max_diff:.2g}): a randomised defense; use version='rand' (EOT)")
        if float(logits.max()) < 1 + 1e-5 and float(logits.min()) > -1e-5 and \
                bool(((logits.sum(1) - 1).abs() < 1e-5).all()):
            flags.append("the model's output looks like probabilities; attacks need the logits "
                         "(remove the final softmax)")
        return flags
