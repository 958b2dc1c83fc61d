"""Speech encoders made in the project: the tiny random backbone (and SSL pretraining)."""
