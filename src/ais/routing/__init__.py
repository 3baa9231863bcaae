"""Routing: the labelled corpus (corpus), the router embedding after the pivot layer (embedding),
the FAISS map with its learned router (topomap), how well it routes (accuracy), and the choice of
a category's skip plan from its layer importance (plans)."""
