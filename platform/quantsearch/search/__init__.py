"""Multi-objective genetic search for mixed precision: NSGA-II over a space's genome, Pareto front, archive."""

from quantsearch.search.budget import Budget, Measures, avg_bits
from quantsearch.search.nsga import Fitness, GenerationStats, Progress, search
from quantsearch.search.plot import pareto_png
from quantsearch.search.result import SearchPoint, SearchResult, non_dominated

__all__ = [
    "Budget", "Fitness", "GenerationStats", "Measures", "Progress", "SearchPoint", "SearchResult", "avg_bits",
    "non_dominated", "pareto_png", "search",
]
