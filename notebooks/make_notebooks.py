"""Writes the tutorial notebooks (without outputs): ``python notebooks/make_notebooks.py``.

The notebooks are generated so they stay consistent with each other and are
stored clean (``execution_count`` null, no outputs); ``tests/test_notebooks.py``
executes every one of them.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import warnings; warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
import torch, numpy as np, matplotlib.pyplot as plt
import xadv, xadv.plot as xp
torch.set_num_threads(1)          # the embedded model is small: one thread is fastest on a shared CPU
model = xadv.zoo.digits_cnn()     # embedded, pretrained (eval mode); nothing is downloaded
x_test, y_test = xadv.data.load_digits("test")
with torch.no_grad():
    correct = model(x_test).argmax(1) == y_test
print(f"test accuracy {correct.float().mean():.3f} on {len(y_test)} digits")
x, y = x_test[correct][:8], y_test[correct][:8]"""

NOTEBOOKS = {
    "01_quickstart.ipynb": [
        ("md", """# 01 · Quickstart: explain a prediction with every method

xadv computes attributions itself (so they can be differentiated, attacked and defended).
Every explainer is called the same way: `explainer(model, x, target)` → `Explanation`,
or functionally `xadv.explain(model, x, method=..., target=..., **params)`."""),
        ("code", SETUP),
        ("md", "## One explanation, drawn over the image\n\nSigned maps use a diverging colormap with white at "
               "exactly zero: red pixels raise the class score, blue ones lower it."),
        ("code", """e = xadv.explain(model, x, method="ig", target=y, steps=32)
print(e)
print("completeness error |sum(attr) - (f(x) - f(baseline))|:", e.delta.abs().max().item())
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
xp.overlay(e, index=0, ax=axes[0], title="IG over the input")
xp.heatmap(e, index=0, ax=axes[1], colorbar=True, title="IG");"""),
        ("md", "## Every method on the same digits\n\n`xadv.explainers.names()` lists the registry. LIME is "
               "sampling-based (seeded), the rest are gradient methods."),
        ("code", """methods = {"Saliency": "saliency", "Input×Grad": "input_x_gradient", "SmoothGrad": "smoothgrad",
           "IG": "integrated_gradients", "Grad-CAM": "gradcam", "Grad-CAM++": "gradcam_pp", "LIME": "lime"}
params = {"smoothgrad": dict(n_samples=25, noise=0.1, seed=0), "integrated_gradients": dict(steps=32),
          "lime": dict(n_samples=300, seed=0)}
expl = {name: xadv.explain(model, x[:4], method=m, target=y[:4], **params.get(m, {})) for name, m in methods.items()}
fig = xp.explanation_grid(expl, n=4, share="none")"""),
        ("md", "## Is the explanation faithful? Deletion and insertion\n\nRemove the most attributed pixels first: "
               "a faithful map makes the class probability drop fast (low area)."),
        ("code", """from xadv.metrics import deletion_curve, insertion_curve, curve_auc
dels, ins = {}, {}
for name in ["Saliency", "IG", "Grad-CAM"]:
    ex = xadv.explain(model, x, method=methods[name], target=y, **params.get(methods[name], {}))
    f, dels[name] = deletion_curve(model, x, ex, steps=20)
    _, ins[name] = insertion_curve(model, x, ex, steps=20, fill="zeros")
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
xp.deletion_curve(f.numpy(), {k: v.numpy() for k, v in dels.items()}, kind="deletion", ax=axes[0])
xp.deletion_curve(f.numpy(), {k: v.numpy() for k, v in ins.items()}, kind="insertion", ax=axes[1])
fig.tight_layout()"""),
        ("md", "## Save and load\n\nExplanations are saved with their inputs, target, outputs and parameters; "
               "`xp.export_attributions` writes plain NumPy arrays for other tools."),
        ("code", """import tempfile, os
d = tempfile.mkdtemp()
e.save(os.path.join(d, "ig.pt"))
e2 = xadv.Explanation.load(os.path.join(d, "ig.pt"))
assert torch.equal(e2.attributions, e.attributions)
arrays = np.load(xp.export_attributions(os.path.join(d, "ig.npz"), e))
print(sorted(arrays.files))"""),
    ],
    "02_attacks_from_explanations.ipynb": [
        ("md", """# 02 · Attacks from explanations

An attribution map says which pixels the model relies on, so it is also a direction to attack.
`xadv.attacks.ExplainerPGD` takes its step direction from any explainer; `DeletionAttack`
removes the top-k pixels an explainer points at (an L0 attack)."""),
        ("code", SETUP.replace("[:8]", "[:48]")),
        ("code", """from xadv import attacks as A, explainers as E
budgets = [0.05, 0.1, 0.15, 0.2]
makers = {
    "FGSM": lambda eps: A.FGSM(eps=eps),
    "PGD-10": lambda eps: A.PGD(eps=eps, steps=10, seed=0),
    "ExplainerPGD[IG]-10": lambda eps: A.ExplainerPGD(E.IntegratedGradients(steps=8, score="log_softmax"),
                                                     eps=eps, steps=10, seed=0),
}
results = {name: [mk(eps)(model, x, y) for eps in budgets] for name, mk in makers.items()}
fig = xp.success_curve(budgets, results, norm="linf")"""),
        ("md", "The results are `AttackResult` objects: adversarial inputs, success mask, predictions and "
               "confidences, perturbation norms and queries."),
        ("code", """res = results["PGD-10"][2]
print(res.summary())
ig = E.IntegratedGradients(steps=32)
before, after = ig(model, res.x[:4], res.y[:4]), ig(model, res.x_adv[:4], res.y[:4])
# the two map columns share ONE colour scale, so magnitudes are comparable
# results index like tensors: res[:4] is an AttackResult of the first four samples (res shows a summary,
# res.to_frame() one row per sample)
fig = xp.attack_grid(res[:4], before, after, n=4)"""),
        ("md", "## Deleting what the explanation points at"),
        ("code", """ks = [10, 25, 50, 100, 200]
curves = {}
for name, ex in {"Saliency": E.Saliency(), "IG": E.IntegratedGradients(steps=16), "Grad-CAM": E.GradCAM()}.items():
    curves[name] = A.DeletionAttack(ex, fill="zeros").success_vs_k(model, x, y, ks)["success_rate"]
fig = xp.budget_curve(ks, curves, xlabel="pixels set to 0 (k)", ylabel="attack success rate", ylim=(0, 1.02))
print(xp.to_markdown([{"explainer": k, **{f"k={kk}": v for kk, v in zip(ks, vs)}} for k, vs in curves.items()]))"""),
    ],
    "03_fooling_explanations.ipynb": [
        ("md", """# 03 · Fooling explanations

Interpretation-fooling attacks change the explanation while the prediction stays the same
(Ghorbani et al., 2019; Dombrowski et al., 2019). They differentiate through the explainer
(`create_graph=True`) on a softplus copy of the ReLU network and are evaluated on the original model."""),
        ("code", SETUP.replace("[:8]", "[:6]")),
        ("code", """from xadv import fooling as Fo
attack = Fo.TopKAttack("saliency", eps=0.05, steps=40, k=0.1, seed=0)
res = attack(model, x, y)
print({k: round(v, 3) for k, v in res.summary().items()})
fig = xp.fooling_grid(res, n=4)"""),
        ("md", "Every similarity metric between the maps before and after is in `res.similarity` "
               "(top-k intersection, rank correlations, SSIM, ...); the prediction was kept for every sample "
               "(`res.kept`)."),
        ("code", """print(xp.to_markdown([{"sample": i, "kept": bool(res.kept[i]),
                        **{k: float(v[i]) for k, v in res.similarity.items()}} for i in range(len(res))], digits=2))"""),
        ("md", """## Make the map look like a chosen target (Dombrowski et al.)

`TargetedManipulation` pulls the explanation towards any target map while the output stays put.
How far it gets depends on the target: towards a map the network really produces inside the
budget (`reachable_target`: the map of `x + ε · random signs`) the MSE drops by an order of
magnitude; towards another digit's map, which this small 28×28 network cannot produce for our
class within 8/255, it drops about 2× (see docs/fooling.md).

The cell below runs both side by side: the working case (a map inside the ball, which the paper's
result relies on: the map of a nearby input the network can actually produce) and the hard case
(another digit's map: the network would have to produce a map its own weights do not give for this
class within 8/255). Same budget, same steps; only the target differs."""),
        ("code", """eps = 8 / 255
inside = Fo.reachable_target(model, "saliency", x, eps, seed=1)
other = xadv.explain(model, x.roll(1, 0), method="saliency")      # the next digit's map
for name, target in {"map inside the ball": inside, "another digit's map": other}.items():
    r = Fo.TargetedManipulation(target, eps=eps, seed=0)(model, x, y)
    before, after = r.extras["target_mse_before"].mean(), r.extras["target_mse_after"].mean()
    print(f"{name:20s} MSE to target {before:.2e} -> {after:.2e} ({before / after:.1f}x), "
          f"kept {r.kept.float().mean():.2f}, output MSE {r.extras['output_mse'].max():.1e}")
    fig = xp.fooling_grid(r, n=2)     # the last column is the target map"""),
        ("md", "## Budget and defenses\n\nA smoother explanation (β-smoothing: softplus instead of ReLU while "
               "explaining) is harder to fool at the same budget."),
        ("code", """budgets = [0.02, 0.05, 0.1]
curve = {}
for name, ex in {"Saliency": "saliency", "β-smoothed saliency (β=3)": xadv.defenses.BetaSmoothed("saliency", beta=3.0)}.items():
    curve[name] = [Fo.TopKAttack(ex, eps=e, steps=20, k=0.1, seed=0)(model, x, y).summary()["topk_intersection"]
                   for e in budgets]
fig = xp.fooling_curve(budgets, curve, key="topk_intersection", ylabel="top-10% intersection", xlabel="budget ε (L∞)")"""),
        ("md", "A defense can also change the model: `ExplanationRegularization` fine-tunes a copy with a penalty on "
               "how much the (unit-norm) saliency map changes over a small displacement. The same top-k attack, now "
               "differentiating the fine-tuned model, moves its maps much less (a short run here; "
               "`python -m xadv.experiments.fooling --sections training` has the full comparison with adversarial "
               "training)."),
        ("code", """from xadv.defenses import ExplanationRegularization
x_train, y_train = xadv.data.load_digits("train")
data = (x_train[:600], y_train[:600], x_test, y_test)     # fine-tune on 600 digits, accuracy on the test split
models = {"fine-tuned, CE only": ExplanationRegularization(lam=0.0, epochs=2, seed=0)(model, *data),
          "curvature penalty": ExplanationRegularization(lam=1.0, epochs=2, seed=0)(model, *data)}
rows = []
for name, r in models.items():
    f = Fo.TopKAttack("saliency", eps=8 / 255, steps=20, seed=0)(r.model, x)
    rows.append({"model": name, "accuracy": r.accuracy_after, **{k: f.summary()[k] for k in ("topk_intersection", "spearman")}})
print(xp.to_markdown(rows))"""),
    ],
    "04_detecting_adversarial_inputs.ipynb": [
        ("md", """# 04 · Detecting adversarial inputs with explanations

Explanations of adversarial inputs look different; a detector reads them as features.
`xadv.detectors.evaluate` fits detectors on some attacks and tests them on held-out attacks and budgets."""),
        ("code", SETUP),
        ("code", """from xadv import attacks as A, detectors as D
x_train, y_train = xadv.data.load_digits("train")
g = torch.Generator().manual_seed(0)
itr = torch.randperm(len(x_train), generator=g)[:150]
ite = torch.randperm(len(x_test), generator=g)[:80]
detectors = {"Saliency-CNN": D.SaliencyDetector("saliency", epochs=10, seed=0),
             "Mahalanobis": D.MahalanobisDetector(seed=0)}
train_attacks = {("PGD", "eps=0.2"): A.PGD(eps=0.2, steps=10, seed=0)}
test_attacks = {("FGSM", "eps=0.1"): A.FGSM(eps=0.1), ("PGD", "eps=0.1"): A.PGD(eps=0.1, steps=10, seed=1),
                ("PGD", "eps=0.2"): A.PGD(eps=0.2, steps=10, seed=1)}
report = D.evaluate(detectors, model, (x_train[itr], y_train[itr]), (x_test[ite], y_test[ite]),
                    train_attacks=train_attacks, test_attacks=test_attacks)
print(D.to_markdown(report))"""),
        ("md", "Every row, FGSM included, on a logarithmic FPR axis: a detector is used at a low false "
               "positive rate (TPR at 1% / 5% FPR), which a linear axis squeezes into the left edge."),
        ("code", """fig = xp.roc_curve(report, log_fpr=True)
report["Mahalanobis"]          # the rows of one detector; report.to_frame() for all of them"""),
        ("md", """`held_out` rows are attacks or budgets the detector never saw while fitting. A detector that
only works on its training attack is not a defense; see `AdaptiveAttack` and
`python -m xadv.experiments.detection` for the white-box adaptive numbers.

**Why the Mahalanobis baseline wins here.** It does not read explanations: it fits one Gaussian
per class to the network's penultimate features and scores the distance of an input to the
nearest class. On these digits that is a strong signal: the CNN is small, its ten classes form
tight, well separated clusters, and an L∞ perturbation of 0.1-0.2 on a 28×28 gray image pushes
the features far outside them (the attacks are large for this data). A saliency map of 784 pixels,
learnt from 150 training digits by a small CNN, is a noisier view of the same change. The
explanation detector earns its keep where feature statistics are weaker: on larger models with
less separated classes, and against attacks tuned to stay inside the class clusters. The
adaptive rows of `python -m xadv.experiments.detection` show how both degrade once the attacker
knows the detector (docs/detectors.md)."""),
    ],
    "05_paper_figures.ipynb": [
        ("md", """# 05 · Figures for papers

`xp.style("paper", columns=1|2)` sets the width of one or two columns, 8 pt text, TrueType fonts
embedded in PDF and SVG text kept as text. `xp.save` picks the format from the extension and writes
the same bytes for the same figure (no dates), so figures can live in git."""),
        ("code", SETUP.replace("[:8]", "[:4]")),
        ("code", """import tempfile, os, hashlib
out = tempfile.mkdtemp()
expl = {"Saliency": xadv.explain(model, x, method="saliency", target=y),
        "IG": xadv.explain(model, x, method="ig", target=y, steps=32),
        "Grad-CAM": xadv.explain(model, x, method="gradcam", target=y)}
with xp.style("paper", columns=2):
    fig = xp.explanation_grid(expl, n=3, share="column")   # one colour scale per column, with colorbars
    for ext in ("pdf", "svg", "png"):
        xp.save(fig, os.path.join(out, f"methods.{ext}"), attributions=expl if ext == "pdf" else None)
print(sorted(os.listdir(out)))"""),
        ("code", """pdf = open(os.path.join(out, "methods.pdf"), "rb").read()
print("TrueType fonts embedded:", b"/FontFile2" in pdf, "| text in SVG:", "<text" in open(os.path.join(out, "methods.svg")).read())
with xp.style("paper", columns=2):
    again = xp.save(xp.explanation_grid(expl, n=3, share="column"), os.path.join(out, "again.pdf"))
print("byte-identical:", hashlib.sha256(pdf).hexdigest() == hashlib.sha256(again.read_bytes()).hexdigest())"""),
        ("md", "## A single-column curve and a table"),
        ("code", """from xadv import attacks as A
budgets = [0.05, 0.1, 0.2]
rates = {"FGSM": [A.FGSM(eps=e)(model, x, y).success_rate for e in budgets],
         "PGD-10": [A.PGD(eps=e, steps=10, seed=0)(model, x, y).success_rate for e in budgets]}
with xp.style("paper", columns=1):
    fig = xp.success_curve(budgets, rates, norm="linf")
    xp.save(fig, os.path.join(out, "success.pdf"))
rows = [{"attack": k, **{f"ε={b}": v for b, v in zip(budgets, vs)}} for k, vs in rates.items()]
print(xp.to_latex(rows, caption="Attack success on the digits CNN", label="tab:success"))"""),
        ("md", """## One figure in another style

`style=` on any figure function styles that one figure and leaves the session's settings
alone: a named style (`"paper"`, `"notebook"`, `"dark"`), a matplotlib style, a `.mplstyle`
file or a dict of rcParams with `base`, `dpi`, `font_size`, `cmap_signed`, `cmap_absolute`."""),
        ("code", """import matplotlib as mpl
before = dict(mpl.rcParams)
fig = xp.explanation_grid(expl, n=2, style="dark")        # black background, maps black at zero
fig = xp.heatmap(expl["IG"], colorbar=True, style={"base": "paper", "font_size": 9, "cmap_signed": "PuOr"})
print("session settings unchanged:", dict(mpl.rcParams) == before)"""),
        ("md", "Raw attributions next to the figure (`methods.npz`) let reviewers re-plot or re-score them:"),
        ("code", """z = np.load(os.path.join(out, "methods.npz"))
print({k: z[k].shape for k in z.files if k.endswith("attributions")})"""),
    ],
    "06_your_own_models.ipynb": [
        ("md", """# 06 · Your own models: an RGB ResNet, a ViT and a token model

The same calls work on researchers' models: several inputs, dict outputs, token ids,
transformers. The architectures come from `xadv.zoo` (torchvision's module names and
state-dict keys, so torchvision weights load; random weights here, small sizes so the
notebook runs in seconds), the token model is trained on a task with planted words."""),
        ("code", """import warnings; warnings.filterwarnings("ignore", message="IProgress not found")
import torch, matplotlib.pyplot as plt
import xadv, xadv.plot as xp
from xadv.explainers import AttentionRollout, GradCAM, IntegratedGradients, Occlusion, Saliency
from xadv.fooling import TopKAttack
from xadv.detectors import SaliencyDetector
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.rand(48, 3, 32, 32)"""),
        ("md", "## An RGB ResNet-18: explain → attack → fool → detect"),
        ("code", """resnet = xadv.zoo.resnet18(num_classes=3, width=8, small_input=True)
y = resnet(x).argmax(1)
e = GradCAM()(resnet, x[:4], target=y[:4])                 # default: the last conv
print(e.params["layer"], e.raw.shape)
lig = IntegratedGradients(steps=16, layer="layer2")(resnet, x[:4], target=y[:4])   # layer attribution
print("layer IG", tuple(lig.attributions.shape), "completeness", float(lig.delta.abs().max()))
adv = xadv.attacks.PGD(eps=8 / 255, steps=5)(resnet, x, y)
print("PGD success", adv.success_rate)
fool = TopKAttack("saliency", eps=8 / 255, steps=10)(resnet, x[:4])
print(fool)
det = SaliencyDetector(explainer="saliency").fit(resnet, x[:24], adv.x_adv[:24])
print("scores clean / adversarial:", det.score(resnet, x[24:]).mean().item(), det.score(resnet, adv.x_adv[24:]).mean().item())"""),
        ("md", """## Two inputs and a dict output: an image with a tabular side input

Explainers take the inputs as a tuple (one attribution per input); attacks take the same
tuple, `perturb=` chooses what changes (the table stays as it is here) and `eps=` gives one
budget per input."""),
        ("code", """class DigitsAndTable(torch.nn.Module):        # the trained digits CNN plus a small table tower
    def __init__(self):
        super().__init__()
        self.cnn, self.table = xadv.zoo.digits_cnn(), torch.nn.Linear(4, 10)
    def forward(self, image, table):
        return {"logits": self.cnn(image) + self.table(table), "table_part": self.table(table)}
two = DigitsAndTable().eval()
digits, _ = xadv.data.load_digits(split="test")
digits, table = digits[:16], torch.rand(16, 4)
y2 = two(digits, table)["logits"].argmax(1)
ig = IntegratedGradients(steps=16)(two, (digits[:4], table[:4]), target=y2[:4])  # "logits" picked by default
print([tuple(a.shape) for a in ig.attributions])
adv2 = xadv.attacks.PGD(eps=0.1, steps=5)(two, (digits, table), y2, perturb=0)
print("image only:", adv2.success_rate, "table unchanged:", torch.equal(adv2.extras["inputs_adv"][1], table))
both = xadv.attacks.PGD(eps=0.1, steps=5)(two, (digits, table), y2, eps=(0.1, 0.5))
print("both inputs:", both.success_rate, {i: round(float(n["linf"].max()), 3) for i, n in both.extras["norms_per_input"].items()})"""),
        ("md", """## A Vision Transformer

Grad-CAM on a token layer (the class token is dropped, the patches go on their grid),
attention rollout, and a fooling attack: its double backward through attention uses the
math kernel of `scaled_dot_product_attention` inside xadv's calls."""),
        ("code", """vit = xadv.zoo.vit_tiny(num_classes=3, image_size=32, patch_size=8, num_layers=2)
cam = GradCAM(layer="encoder.layers.encoder_layer_1.ln_1")(vit, x[:4])
roll = AttentionRollout()(vit, x[:4])
fool = TopKAttack("saliency", eps=8 / 255, steps=5)(vit, x[:4])
print(cam.raw.shape, roll.raw.shape, fool)
try:
    GradCAM()(vit, x[:1])
except ValueError as err:
    print("no default layer on a ViT:", str(err)[:120], "...")
fig = xp.explanation_grid({"Grad-CAM (tokens)": cam, "rollout": roll}, n=4, share="none")"""),
        ("md", """## A token model

`text_classifier` decides by planted words (`great`, `superb` → class 1; `awful`, `dull` → 0),
so the right explanation is known. Token ids go through the embedding with `layer=`;
Occlusion replaces tokens by the pad id."""),
        ("code", """from xadv.zoo.text import PAD, planted_tokens, vocabulary
text = xadv.zoo.text_classifier()
ids, labels, planted = planted_tokens(6, seed=3)
e = IntegratedGradients(steps=32, baseline=PAD, layer="embedding")(text, ids, target=labels)
occ = Occlusion(baseline=PAD)(text, ids, target=labels)
per_token = e.attributions.sum(-1)
top = per_token.masked_fill(ids == PAD, -1e9).argmax(1)
print("top token is a planted word:", planted[torch.arange(6), top].tolist())
words = vocabulary()
tokens = [[words[int(t)] for t in row if int(t) != PAD] for row in ids]
fig = xp.text(tokens, per_token, labels=[f"class {int(v)}" for v in labels])"""),
        ("md", "The same view as HTML (for reports): `xp.text_html(tokens, per_token)`."),
        ("code", """from IPython.display import HTML
HTML(xp.text_html(tokens[:3], per_token[:3]))"""),
    ],
    "07_evaluating_explanations.ipynb": [
        ("md", """# 07 · Evaluating explanations

Sanity checks (model-parameter randomisation, input invariance) and the metric families of
`xadv.metrics` for several explainers on the digits CNN, as one report card. Localisation uses the
digit strokes as planted evidence (`xadv.experiments.evaluation.planted_evidence`)."""),
        ("code", """import matplotlib
matplotlib.use("Agg")
import torch, xadv, xadv.metrics as M
from xadv.experiments.evaluation import planted_evidence, sanity_table
model = xadv.zoo.digits_cnn()
x, y, mask = planted_evidence(6, seed=0)
explainers = {"saliency": xadv.explainers.get("saliency"),
              "input_x_gradient": xadv.explainers.get("input_x_gradient"),
              "smoothgrad": xadv.explainers.get("smoothgrad", n_samples=8, seed=0),
              "ig": xadv.explainers.get("ig", steps=16),
              "gradcam": xadv.explainers.get("gradcam")}"""),
        ("md", "Sanity table: MPRT below 0.5 and input invariance below 1e-3 count as passed."),
        ("code", """sanity = sanity_table(model, x, y, list(explainers.values()))
sanity.values = dict(zip(explainers, sanity.values.values()))
print(sanity.to_markdown())"""),
        ("md", "The report card: one row per explainer, arrows give the direction of better."),
        ("code", """card = M.evaluate(model, x, y, explainers,
                  ["faithfulness_estimate", "pixel_flipping", "avg_sensitivity", "sparseness",
                   "pointing_game", "relevance_rank_accuracy", "auc"], mask=mask,
                  params={"faithfulness_estimate": {"features_in_step": 28},
                          "pixel_flipping": {"features_in_step": 28},
                          "avg_sensitivity": {"radius": 0.05, "n_samples": 3, "seed": 0}})
print(card.to_markdown())
print("ranking:", card.ranking())
fig = card.figure()"""),
    ],
}


def build(name: str, cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        nb.cells.append(new_markdown_cell(src) if kind == "md" else new_code_cell(src))
    for i, c in enumerate(nb.cells):  # stable ids: regenerating gives the same files
        c["id"] = f"{Path(name).stem[:2]}-{i:02d}"
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
