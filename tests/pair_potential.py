"""A Lennard-Jones model built only from the shared graph layer, to test that layer against ase."""

import torch

from sciml.graph import AtomicGraph, MessagePassing, forces_and_stress
from sciml.ops import scatter_sum


class LennardJonesModel(MessagePassing):
    """ase's LennardJones (smooth=False): 4 eps ((s/r)^12 - (s/r)^6) shifted to 0 at the cutoff."""

    def __init__(self, sigma: float = 1.0, epsilon: float = 1.0, cutoff: float = 3.0):
        super().__init__(cutoff=cutoff)
        self.sigma, self.epsilon = sigma, epsilon

    def pair_energy(self, r):
        return 4 * self.epsilon * ((self.sigma / r) ** 12 - (self.sigma / r) ** 6)

    def forward(self, graph: AtomicGraph, compute_forces: bool = True, compute_stress: bool = True):
        periodic = bool(graph.pbc.any())
        geometry = self.geometry(graph, forces=True, stress=compute_stress and periodic)
        shift = self.pair_energy(torch.tensor(self.cutoff, dtype=geometry.lengths.dtype))
        pair = 0.5 * (self.pair_energy(geometry.lengths) - shift)  # each pair appears twice
        atom_energy = scatter_sum(pair, graph.edge_index[0], graph.num_nodes)
        energy = scatter_sum(atom_energy, graph.batch, graph.num_graphs)
        forces, stress = forces_and_stress(energy, geometry, graph)
        out = {"energy": energy.detach(), "forces": forces}
        if stress is not None:
            out["stress"] = stress
        return out
