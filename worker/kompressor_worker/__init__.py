"""kompressor's data plane: the worker that turns tasks into compressed images."""
