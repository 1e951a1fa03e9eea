"""Pretrained text encoders for item content (optional: the `text` extra).

Nothing else in the package imports this unless text features are asked for
(`tm.load_dataset(..., text_features=True)` or `config.dataset.text_features=True`).
"""
