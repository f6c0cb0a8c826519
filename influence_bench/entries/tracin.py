"""``tracin``: TracIn (Pruthi et al. 2020, "Estimating Training Data Influence by Tracing Gradient
Descent"): learning-rate-weighted gradient dot products summed over checkpoints of the training.

s[j, i] = - sum_c lr_c g_j(theta_c)^T g_i(theta_c), over the checkpoints the task keeps of its
reference training (``TaskSpec.checkpoints``, evenly spaced in epochs, the last the end of training;
a run provides them). ``checkpoints=last`` keeps only the last one: the learning-rate-weighted gradient
dot product at the end of training. No curvature and no damping: it computes its own scores.
"""

from __future__ import annotations

import torch

from influence_bench.curvature import exact
from influence_bench.entries.base import Entry, register


@register
class TracIn(Entry):
    name = "tracin"
    description = "TracIn: learning-rate-weighted gradient dot products summed over training checkpoints"
    capabilities = frozenset({"scores"})
    has_damping = False
    needs_checkpoints = True
    parameters = {"checkpoints": ("all", "last")}

    def skip(self, problem):
        if not problem.checkpoints:
            return ("needs checkpoints of the reference training (problem.checkpoints), which a run provides; "
                    "this problem has none")
        return None

    def fit(self, problem):
        """The whole score matrix, one checkpoint at a time (scores do not depend on a damping)."""
        reason = self.skip(problem)
        if reason:
            raise ValueError(reason)
        chosen = problem.checkpoints if self.params["checkpoints"] == "all" else problem.checkpoints[-1:]
        total = torch.zeros(problem.n_test, problem.n_train, dtype=torch.float64, device=problem.device)
        for lr, model in chosen:
            train = exact.per_example_gradients(model, problem.x_train, problem.y_train, problem.loss)
            test = exact.per_example_gradients(model, problem.x_test, problem.y_test, problem.loss)
            total -= lr * (test @ train.T)
        self.scores_ = total
        self.n_checkpoints_ = len(chosen)
        return self

    def scores(self, problem, damping=None, queries=None):
        self._check_fitted()
        return self.scores_.clone() if queries is None else self.scores_[queries]

    def diagnostics(self):
        return {"checkpoints": float(self.n_checkpoints_)}
