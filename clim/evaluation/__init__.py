"""Evaluation protocols of METHOD §5 (kNN, linear, semi-supervised, similarity, t-SNE)."""

from clim.evaluation.features import extract_features
from clim.evaluation.knn import run_knn, weighted_knn
from clim.evaluation.similarity import intra_class_similarity

__all__ = ["extract_features", "intra_class_similarity", "run_knn", "weighted_knn"]
