"""kompressor's control plane: the kopf operator, local mode and the `kompressor` command."""
