"""``ekfac-kronfluence``: kronfluence's EK-FAC (Grosse et al. 2023, "Studying Large Language Model Generalization with Influence Functions"), read back as the suite's Kronecker eigen form.

An independent implementation (kronfluence, https://github.com/pomonam/kronfluence) beside the suite's
own ``ekfac`` (curvlinops): kronfluence fits its factors (activation and pseudo-gradient covariances,
their eigendecompositions, and the corrected eigenvalues ``lambda_matrix``) on the training set, and
this entry reads them back as ``KroneckerEigenBlock``s, so inverse, curvature operator, metrics and
spectra all go through ``EigenEntry``.

kronfluence's conventions, and how they map to the suite's:

- the training loss is the SUM of the per-example cross-entropies over a batch; ``lambda_matrix`` is the
  sum over examples of the squared per-example gradients in the eigenbasis, so ``lambda_matrix /
  num_lambda_processed`` is the mean of the per-example curvatures, the curvature of the MEAN training
  loss the suite uses (the covariances' scale does not matter: only their eigenvectors are used);
- an ``nn.Linear`` with a bias gets a trailing 1 on its input (weight and bias joint, the suite's
  ``separate=false``), the per-example gradient is ``[d_out, d_in + 1]`` = ``[W | b]``, and the
  eigenvectors are columns: ``lambda[o, a]`` belongs to ``q_g[:, o] (x) q_a[:, a]``, exactly the layout
  of ``KroneckerEigenBlock``;
- the Fisher: kronfluence's default samples one label per example from the model's predictive
  distribution (``fisher=mc``; one draw for the covariances and another for the eigenvalue correction,
  seeded), ``use_empirical_fisher=True`` uses the observed labels (``fisher=empirical``).

Everything is computed in float64 on the CPU (the eigendecomposition too), in a temporary directory
that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import tempfile
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from influence_bench.curvature.eigen import EigenCurvature, KroneckerEigenBlock
from influence_bench.curvature.exact import layer_slices
from influence_bench.entries.base import EigenEntry, register

INSTALL_HINT = "needs the kronfluence extra: pip install -e '.[kronfluence]'"
FACTORS_NAME = "ekfac"
BATCH = 512  # examples per batch of kronfluence's passes over the training set
SEED = 0  # of the labels sampled for fisher=mc


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def kronfluence_task(seed: int = SEED):
    """A kronfluence ``Task`` for a classifier on ``(x, y)`` batches: the training loss is the summed
    cross-entropy (labels drawn from the model's softmax when kronfluence asks for ``sample=True``,
    from a generator seeded with ``seed``); the measurement is the summed cross-entropy on the observed
    labels, so that kronfluence's query gradients are the suite's per-example test-loss gradients."""
    import torch.nn.functional as F
    from kronfluence.task import Task

    class SummedCrossEntropy(Task):
        def __init__(self) -> None:
            self.generator = torch.Generator().manual_seed(seed)

        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    probs = torch.softmax(logits.detach(), dim=-1)
                    y = torch.multinomial(probs, num_samples=1, generator=self.generator).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    return SummedCrossEntropy()


def factor_arguments(fisher: str):
    """kronfluence's ``FactorArguments`` for EK-FAC on the whole training set, every step in float64."""
    from kronfluence.arguments import FactorArguments

    if fisher not in ("mc", "empirical"):
        raise ValueError(f"unknown Fisher type {fisher!r}; use mc or empirical")
    f64 = torch.float64
    return FactorArguments(
        strategy="ekfac", use_empirical_fisher=fisher == "empirical",
        covariance_max_examples=None, lambda_max_examples=None,
        activation_covariance_dtype=f64, gradient_covariance_dtype=f64, eigendecomposition_dtype=f64,
        per_sample_gradient_dtype=f64, lambda_dtype=f64)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """kronfluence's INFO log lines off for the duration (its loggers only, the root logger untouched), and
    its FutureWarning about ``torch.cuda.amp.GradScaler`` (a disabled scaler here: no mixed precision).

    The objects alive on entry are frozen out of the garbage collector meanwhile: kronfluence calls
    ``gc.collect()`` before and after each of its passes (to release GPU memory), and in a process that
    holds the suite's libraries each call walks the whole heap (about 0.3 s each, most of a fit on a
    small task). Garbage made during the fit is still collected."""
    logger = logging.getLogger("kronfluence")
    level = logger.level
    logger.setLevel(logging.WARNING)
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler", category=FutureWarning)
            yield
    finally:
        gc.unfreeze()
        logger.setLevel(level)


def fit_factors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fisher: str, output_dir: str,
                seed: int = SEED):
    """Run kronfluence's factor computation on a float64 copy of ``model``. Returns the ``Analyzer``
    (its results under ``output_dir``, for kronfluence's own scores) and the loaded factors:
    factor name -> module name -> tensor."""
    from kronfluence.analyzer import Analyzer, prepare_model

    task = kronfluence_task(seed)
    prepared = prepare_model(copy.deepcopy(model).double(), task)
    with quiet():
        analyzer = Analyzer(analysis_name="influence_bench", model=prepared, task=task, cpu=True,
                            disable_tqdm=True, output_dir=output_dir)
        dataset = torch.utils.data.TensorDataset(x.to(torch.float64), y)
        analyzer.fit_all_factors(factors_name=FACTORS_NAME, dataset=dataset, per_device_batch_size=BATCH,
                                 factor_args=factor_arguments(fisher), overwrite_output_dir=True)
        factors = analyzer.load_all_factors(factors_name=FACTORS_NAME)
    return analyzer, factors


def eigen_from_factors(model: nn.Module, factors: dict) -> EigenCurvature:
    """The suite's eigen form from kronfluence's EK-FAC factors: one ``KroneckerEigenBlock`` per
    ``nn.Linear`` (weight and bias joint), eigenvalues ``lambda_matrix / num_lambda_processed``."""
    from kronfluence.utils.constants import (
        ACTIVATION_EIGENVECTORS_NAME,
        GRADIENT_EIGENVECTORS_NAME,
        LAMBDA_MATRIX_NAME,
        NUM_LAMBDA_PROCESSED,
    )

    blocks = []
    device = next(model.parameters()).device  # kronfluence runs on the CPU (cpu=True); the form goes to the model
    for name, linear in _linears(model):
        q_a = factors[ACTIVATION_EIGENVECTORS_NAME][name].to(device, torch.float64)
        q_g = factors[GRADIENT_EIGENVECTORS_NAME][name].to(device, torch.float64)
        lam = factors[LAMBDA_MATRIX_NAME][name].to(device, torch.float64) / float(factors[NUM_LAMBDA_PROCESSED][name])
        bias = linear.bias is not None
        expected = (linear.out_features, linear.in_features + int(bias))
        if tuple(lam.shape) != expected or q_g.shape[0] != expected[0] or q_a.shape[0] != expected[1]:
            raise ValueError(f"kronfluence's factors of layer {name!r} have shapes q_g {tuple(q_g.shape)}, "
                             f"q_a {tuple(q_a.shape)}, lambda {tuple(lam.shape)}; expected lambda {expected}")
        blocks.append(KroneckerEigenBlock(q_g, q_a, lam.flatten(), bias))
    return EigenCurvature(layer_slices(model), blocks)


@register
class EKFACKronfluence(EigenEntry):
    """EK-FAC fitted by kronfluence (Grosse et al. 2023), read back as Kronecker eigen blocks.

    ``fisher=mc`` (kronfluence's default): its factors use labels sampled from the model's predictive
    distribution, one per example (the MC Fisher); ``fisher=empirical``: the observed labels (the
    empirical Fisher, kronfluence's ``use_empirical_fisher=True``). Weight and bias joint per layer;
    exact damping, as the suite's ``ekfac``.
    """

    name = "ekfac-kronfluence"
    description = ("EK-FAC (kronfluence, Grosse et al. 2023): Kronecker eigenbasis with corrected eigenvalues; "
                   "Fisher from one sampled label per example (mc, its default) or the observed labels (empirical)")
    parameters = {"fisher": ("mc", "empirical")}

    def skip(self, problem):
        try:
            import kronfluence  # noqa: F401
        except ImportError:
            return INSTALL_HINT
        if problem.loss.name != "cross-entropy":
            return (f"the kronfluence Task here is a classifier's (summed cross-entropy, labels sampled from the "
                    f"softmax); this task's loss is {problem.loss.name}")
        covered = sum(p.numel() for _, m in _linears(problem.model) for p in m.parameters())
        if covered != problem.n_params:
            return ("kronfluence's EK-FAC here covers nn.Linear layers only, and the model has other parameters "
                    "(a convolution's patches are not unfolded as curvlinops' are)")
        return None

    def fit(self, problem):
        with tempfile.TemporaryDirectory(prefix="kronfluence-") as tmp:
            _, factors = fit_factors(problem.model, problem.x_train, problem.y_train, self.params["fisher"], tmp)
        self.eigen_ = eigen_from_factors(problem.model, factors)
        return self
