"""The prompt's own layer scores: GRIFFIN's idea at layer granularity (FiRST: the prefill decides)."""
from ais.methods import Method, MethodError, register


@register
class PromptPlan(Method):
    """The lowest layers by the prompt's own block influence on its prefill, which runs every layer:
    the plan applies to the generated tokens only."""

    name = "prompt"
    needs = frozenset({"scores"})
    decode_only = True

    def plan(self, request, budget):
        if request.scores is None:
            raise MethodError("the prompt plan needs the prompt's own layer scores, from a prefill of every layer")
        return self.setup.plan_of(self.setup.from_scores(request.scores, budget), budget)
