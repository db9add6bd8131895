// LAMMPS pair style "sciml": a sciml .pt2 package (sciml.deploy.export) as a LAMMPS potential.
//
//   plugin load  /path/to/pair_sciml.so
//   atom_modify  map yes
//   pair_style   sciml model.pt2
//   pair_coeff   * * H C O          (one element symbol per atom type)
//
// Each step the periodic graph of the local atoms is built from a full neighbour list: a ghost atom
// becomes an edge to its owner (found by atom ID) with the integer cell shift between the two, so a
// model of any depth sees the same periodic graph as in Python. Forces land on local atoms only,
// which makes the result independent of `newton`; the virial comes from the model (-dE/dstrain).
// One MPI rank: with several, a ghost's owner lives on another rank (refused with a message).
#pragma once

#include "pair.h"

#include <memory>
#include <vector>

namespace sciml {
class Package;
}

namespace LAMMPS_NS {

class PairSciML : public Pair {
 public:
  explicit PairSciML(class LAMMPS *lmp);
  ~PairSciML() override;

  void compute(int eflag, int vflag) override;
  void settings(int narg, char **arg) override;
  void coeff(int narg, char **arg) override;
  void init_style() override;
  double init_one(int i, int j) override;

 private:
  void allocate();
  // The lattice shift S (integers) with x_ghost - x_owner = S @ cell, from LAMMPS's triclinic box.
  void image_shift(const double *ghost, const double *owner, double *shift) const;

  std::unique_ptr<sciml::Package> package_;
  std::vector<int64_t> type_numbers_;  // atomic number of each atom type, index 1..ntypes
};

}  // namespace LAMMPS_NS
