"""Vision workloads (models, data, training) — knows nothing of CIM."""

from cimflow.vision.digits import DigitsData, accuracy, load_digits_data, small_cnn, train_classifier

__all__ = ["DigitsData", "accuracy", "load_digits_data", "small_cnn", "train_classifier"]
