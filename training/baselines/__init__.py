"""Baselines MoLEx is compared with (MFCC + logistic regression)."""
