"""ADV^2's JointAttack against the meaningful-perturbation mask (bilevel scheme) and
Subramanya et al.'s Grad-CAM-hiding patch, on the digits CNN."""
import pytest
import torch

import xadv.data
import xadv.zoo
from xadv.attacks import AdversarialPatch, GradCAMHidingPatch, gradcam_mass
from xadv.explainers import GradCAM, MeaningfulPerturbation
from xadv.fooling import JointAttack


@pytest.fixture(scope="module")
def digits():
    return xadv.zoo.digits_cnn(), *xadv.data.load_digits("test")


@pytest.mark.slow
def test_joint_attack_keeps_the_mask_closer_than_targeted_pgd(digits):
    model, x, y = digits
    x, y = x[:6], y[:6]
    tgt = (y + 1) % 10
    mp = MeaningfulPerturbation(steps=60, perturbation="constant")
    runs = {}
    for name, kw in (("pgd", dict(c=1e-3, c_factor=1.0, c_min=1e-3)), ("adv2", {})):
        r = JointAttack(mp, eps=0.2, steps=30, inner_steps=10, seed=0, **kw)(model, x, tgt)
        assert r.explanation_adv.method == "meaningful_perturbation"
        # the returned explanation is the explainer run from scratch on x_adv, for the target
        torch.testing.assert_close(r.explanation_adv.attributions, mp(model, r.x_adv, tgt).attributions)
        runs[name] = r
    for r in runs.values():
        assert bool(r.kept.all()) and bool((r.pred_adv == tgt).all())
    mse = {k: float((r.explanation_adv.raw - r.explanation_clean.raw).pow(2).mean()) for k, r in runs.items()}
    # measured: 0.151 (targeted PGD) vs 0.132 (JointAttack)
    assert mse["adv2"] < 0.95 * mse["pgd"], mse


def test_joint_attack_mask_checks(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match="inner_steps"):
        JointAttack(MeaningfulPerturbation(), inner_steps=0)
    with pytest.raises(TypeError, match="not differentiable"):
        from xadv.fooling import TopKAttack
        TopKAttack(MeaningfulPerturbation())


@pytest.mark.slow
def test_gradcam_hiding_patch_reaches_the_target_with_less_gradcam_mass(digits):
    model, x, y = digits
    xtr, _ = xadv.data.load_digits("train")
    keep = y[:64] != 3
    xe = x[:64][keep]
    res = {}
    for lam in (0.0, 10.0):
        atk = GradCAMHidingPatch(size=10, target=3, steps=200, lr=0.2, placement=(9, 9), lam=lam, seed=0)
        atk.fit(model, xtr[:256])
        r = atk(model, xe, 3)
        res[lam] = (float((r.pred_adv == 3).float().mean()), float(r.extras["gradcam_mass_in_patch"].mean()))
        # the reported mass is Grad-CAM's share inside the 10x10 square
        region = atk.region(xe, r.extras["locations"], 10).float()
        torch.testing.assert_close(r.extras["gradcam_mass_in_patch"],
                                   gradcam_mass(GradCAM(), model, r.x_adv, region, torch.full((len(xe),), 3)))
    # measured: target rate 0.59 -> 0.69, Grad-CAM mass in the patch 0.215 -> 0.180
    assert res[10.0][0] >= 0.5 and res[10.0][0] >= res[0.0][0] - 0.05, res
    assert res[10.0][1] < res[0.0][1] - 0.02, res


def test_gradcam_hiding_patch_checks():
    with pytest.raises(ValueError, match="targeted"):
        GradCAMHidingPatch(size=3)
    with pytest.raises(TypeError, match="not differentiable"):
        GradCAMHidingPatch(size=3, target=1, gradcam="lime")
    assert isinstance(GradCAMHidingPatch(size=3, target=1), AdversarialPatch)
