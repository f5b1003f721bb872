"""Helpers shared by the training, evaluation and cropping scripts."""
