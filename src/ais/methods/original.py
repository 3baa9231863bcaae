"""The original prototype's two plans on this model (it used 4 groups of 7 layers on Llama 3.2 3B):
a fixed half (every second contiguous group) and, per routed category, the one group with the
lowest group-ablation KL (never the group holding layer 0). Their size is their own."""
import numpy as np

from ais.methods import Method, register


def layer_groups(n_layers: int, n_groups: int) -> list[list[int]]:
    """`n_groups` contiguous groups covering all layers, sizes differing by at most one."""
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or not 1 <= n_groups <= n_layers:
        raise ValueError(f"importance.n_groups={n_groups!r} must be an integer in 1..{n_layers}")
    bounds = np.linspace(0, n_layers, n_groups + 1).round().astype(int)
    return [list(range(bounds[g], bounds[g + 1])) for g in range(n_groups)]


def original_plans(n_layers: int, group_kl: np.ndarray, categories: list[str]) -> dict[str, dict[str, list[int]]]:
    """{plan name: {category: layers}} for any number of groups (at least 2)."""
    n_groups = group_kl.shape[1]
    if n_groups < 2:
        raise ValueError(f"the original plans need at least 2 layer groups, importance.n_groups is {n_groups}")
    groups = layer_groups(n_layers, n_groups)
    fixed = sorted(i for g in range(1, n_groups, 2) for i in groups[g])
    best = {c: [i for i in groups[int(np.nanargmin(group_kl[k][1:])) + 1] if i != 0] for k, c in enumerate(categories)}
    return {"original_fixed_half": {c: fixed for c in categories}, "original_best_group": best}


class _Original(Method):
    needs = frozenset({"route"})
    deployable = False
    control = True
    own_budget = True   # the plan's size is the prototype's, not the budget's

    def plan(self, request, budget):
        data = self.setup.importance_data()
        plans = original_plans(self.setup.n_layers, data["raw_group_kl"], [str(c) for c in data["categories"]])
        return self.setup.plan_of(plans[self.name][request.category], budget)


@register
class OriginalFixedHalf(_Original):
    name = "original_fixed_half"


@register
class OriginalBestGroup(_Original):
    name = "original_best_group"
