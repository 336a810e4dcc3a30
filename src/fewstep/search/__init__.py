"""Inference-time search: verifiers, best-of-N, zero-order noise search and golden seeds, on any sampling plan."""

from fewstep.search.run import SEARCHES, SearchResult, parse_search, search_sample
from fewstep.search.seeds import SeedRanking, golden_seeds, rank_seeds, spearman
from fewstep.search.verifiers import VERIFIERS, Verifier, build_verifier

__all__ = ["SEARCHES", "SearchResult", "SeedRanking", "VERIFIERS", "Verifier", "build_verifier", "golden_seeds",
           "parse_search", "rank_seeds", "search_sample", "spearman"]
