"""One plan for every prompt: the lowest layers of the importance pooled over all categories."""
from ais.methods import Method, register


@register
class GlobalPlan(Method):
    """The same layers for every request (the pooled importance's lowest, past the pivot)."""

    name = "global"

    def plan(self, request, budget):
        return self.setup.plan_of(self.setup.lowest(self.setup.pooled_importance(), budget), budget)


@register
class GlobalAnyLayer(Method):
    """A control: the global plan allowed to use the router's layers too (what the pivot rule costs)."""

    name = "global_any_layer"
    deployable = False
    control = True

    def plan(self, request, budget):
        return self.setup.plan_of(self.setup.lowest(self.setup.pooled_importance(), budget, below_pivot=True), budget)
