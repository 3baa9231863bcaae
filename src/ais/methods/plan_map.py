"""The plan-defined map (PuDDing's candidate omission sets, FiRST's prompt-decides-the-plan, on the
original prototype's router -> map -> plan architecture): the request's candidate plan by the vote of
its nearest searched map entries (`plan_map`) or by a logistic regression trained on the candidate
labels (`plan_map_learned`), from `data/plan_map` (stage `plan_map`). One lookup, no extra forward."""
from ais.methods import Method, MethodError, register
from ais.routing.candidates import CandidatePlans

FILE = "data/plan_map"


@register
class PlanMapPlan(Method):
    """The candidate plan of the request's nearest searched map entries (similarity-weighted vote of
    `router.k`), at the budget's layer count."""

    name = "plan_map"
    needs = frozenset({"route"})
    router = "knn"

    def __init__(self, setup):
        super().__init__(setup)
        self._plans = None

    def candidates(self) -> CandidatePlans:
        if self._plans is None:
            self._plans = CandidatePlans.load(self.setup.artifact(FILE), self.setup.topo.identity)
        return self._plans

    def unavailable(self):
        if not self.setup.artifact(FILE).joinpath("candidates.json").is_file():
            return f"no plan map in {self.setup.artifact(FILE)} (stage plan_map)"
        return None

    def plan(self, request, budget):
        if request.embedding is None:
            raise MethodError("the plan map needs the request's router embedding")
        n = budget.layers if budget.layers is not None else self.setup.count()
        layers = self.candidates().plan_layers(request.embedding, n, self.setup.k, self.router)
        return self.setup.plan_of(layers, budget)


@register
class LearnedPlanMapPlan(PlanMapPlan):
    """The candidate plan a logistic regression on the searched entries' embeddings picks."""

    name = "plan_map_learned"
    router = "learned"
