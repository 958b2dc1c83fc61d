"""What the experts do: usage per attack and layer, novelty, the domain-adaptation experiment."""
