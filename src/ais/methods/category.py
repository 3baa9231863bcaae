"""Plans from a category's importance: the routed category's (the decoder's default), the true
category's (the oracle control) and the mean layer scores of the category's map entries."""
import numpy as np

from ais.methods import Method, MethodError, register


@register
class CategoryPlan(Method):
    """The routed category's lowest-importance layers past the pivot (the original prototype's plan)."""

    name = "category"
    needs = frozenset({"route"})

    def plan(self, request, budget):
        return self.setup.plan_of(self.setup.lowest(self.setup.category_importance(request.category), budget), budget)


@register
class OraclePlan(Method):
    """A control: the prompt's true category's plan (separates a wrong route from a category plan no better)."""

    name = "oracle"
    needs = frozenset({"truth"})
    deployable = False
    control = True

    def plan(self, request, budget):
        if request.truth is None:
            raise MethodError("the oracle plan needs the prompt's true category")
        return self.setup.plan_of(self.setup.lowest(self.setup.category_importance(request.truth), budget), budget)


@register
class CategoryScoresPlan(Method):
    """A control between category and neighbours: the mean of the routed category's map entries' own
    layer scores (the measure of the neighbours and prompt plans, the label of the category plan)."""

    name = "category_scores"
    needs = frozenset({"route"})
    deployable = False
    control = True

    def unavailable(self):
        if self.setup.topo.prompt_scores is None:
            return "the map holds no per-entry layer scores (build it with `map.prompt_scores: true`)"
        return None

    def plan(self, request, budget):
        topo = self.setup.topo
        members = np.flatnonzero(topo.labels == topo.categories.index(request.category))
        return self.setup.plan_of(self.setup.from_scores(topo.neighbour_scores(members), budget), budget)
