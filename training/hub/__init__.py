"""Publishing to the Hugging Face Hub: model cards."""
