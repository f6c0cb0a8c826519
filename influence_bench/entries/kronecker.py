"""What K-FAC and EK-FAC share: their parameter grid (Fisher type, MC samples, weight and bias
together or apart, the approximation of a weight-sharing layer) and how it reaches curvlinops.

``approx``: how a convolution, whose weight is shared over the image's positions, gets its factors
(Eschenhagen et al. 2023, curvlinops' ``kfac_approx``): ``expand`` treats every position as an
example of its own, ``reduce`` sums over the positions first. The two are equal on nn.Linear
layers, so they differ only on a task with convolutions (``digits-cnn``)."""

from __future__ import annotations

from influence_bench.entries.base import EigenEntry

FISHERS = ("type-2", "mc", "empirical")
SAMPLES = (1, 4, 16)


class KroneckerEntry(EigenEntry):
    """What K-FAC and EK-FAC share: the Fisher type, the MC sample count, weight and bias together or apart."""

    parameters = {"fisher": FISHERS, "samples": SAMPLES, "separate": (False, True), "approx": ("expand", "reduce")}

    @classmethod
    def invalid_point(cls, params):
        if params.get("samples", 1) != 1 and params.get("fisher") != "mc":
            return "samples applies to fisher=mc only"
        return None

    def factor_args(self) -> dict:
        return {"fisher": self.params["fisher"], "separate": self.params["separate"],
                "mc_samples": self.params["samples"], "approx": self.params["approx"]}
