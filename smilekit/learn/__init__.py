"""Training and judging the networks: models, datasets, the training loop, evaluation, metrics, plots and retraining on feedback."""
