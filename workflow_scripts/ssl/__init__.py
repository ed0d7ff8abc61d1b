"""Self-supervised (SimCLR) representation learning: model, loss, augmentation, training."""
