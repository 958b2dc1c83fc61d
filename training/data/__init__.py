"""Corpora as shipped -> `datasets`: protocol parsers, audio decoding and the crop/pad policy, loaders, collator."""
