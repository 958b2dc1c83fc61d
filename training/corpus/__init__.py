"""The offline mini corpus in the ASVspoof 5 layout: bona fide sources, spoofing attacks, the builder."""
