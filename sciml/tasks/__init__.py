"""Task drivers that run trained models on benchmark protocols (OC20 S2EF, IS2RE/IS2RS, PDE
rollouts) and the metrics that score them."""
