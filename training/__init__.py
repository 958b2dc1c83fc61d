"""Training-side code for MoLEx: data loaders, metrics, the mini corpus, training and analysis scripts."""
