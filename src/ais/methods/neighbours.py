"""The prompt's nearest map entries' own layer scores (their mean block influence)."""
from ais.methods import Method, MethodError, register


@register
class NeighboursPlan(Method):
    """The mean block influence of the request's k nearest map entries, normalised, the lowest layers
    past the pivot (needs a map built with `map.prompt_scores: true`)."""

    name = "neighbours"
    needs = frozenset({"route", "neighbours"})

    def unavailable(self):
        if self.setup.topo.prompt_scores is None:
            return "the map holds no per-entry layer scores (build it with `map.prompt_scores: true`)"
        return None

    def plan(self, request, budget):
        if not len(request.neighbours):
            raise MethodError("the neighbours plan needs the prompt's nearest map entries")
        scores = self.setup.topo.neighbour_scores(request.neighbours)
        return self.setup.plan_of(self.setup.from_scores(scores, budget), budget)
