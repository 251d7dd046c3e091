"""Self-alignment loops: rounds of sample, label, train and evaluate (`alignkit loop`; docs/loops.md)."""
