// A sciml model exported by sciml.deploy.export (an AOTInductor .pt2 package), loaded through libtorch.
//
// The package maps one structure to energy, per-atom energies, forces and virial:
//   inputs  positions (N, 3) Å, atomic_numbers (N,) int64, cell (3, 3) Å (rows = lattice vectors),
//           edge_index (2, E) int64 (row 0 centre i, row 1 neighbour j, both directions present),
//           cell_shifts (E, 3) integer-valued: edge vector = positions[j] - positions[i] + S @ cell;
//   outputs energy (1,) eV, energies (N,) eV, forces (N, 3) eV/Å, virial (3, 3) eV = -dE/dstrain.
// Every failure is a std::runtime_error with a one-line message, which callers print as it is.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace sciml {

// The atomic number of an element symbol ("Cu" -> 29); 0 if the symbol is not an element.
int64_t atomic_number(const std::string &symbol);

// One structure's graph in the package's input layout (row-major, double precision).
struct Graph {
  std::vector<double> positions;     // (N, 3) Å
  std::vector<int64_t> numbers;      // (N,)
  double cell[9] = {0};              // (3, 3) Å, rows = lattice vectors (zeros for a molecule)
  std::vector<int64_t> edge_index;   // (2, E): all centres, then all neighbours
  std::vector<double> cell_shifts;   // (E, 3) integer-valued
};

// The package's predictions, converted to double.
struct Prediction {
  double energy = 0;              // eV
  std::vector<double> energies;   // (N,) eV
  std::vector<double> forces;     // (N, 3) eV/Å
  double virial[9] = {0};         // (3, 3) eV, -dE/dstrain (ase stress = -virial / volume)
};

// A loaded package whose metadata has been checked against this libtorch (format, torch version,
// device); construction throws std::runtime_error naming the problem.
class Package {
 public:
  explicit Package(const std::string &path);
  ~Package();

  double cutoff() const { return cutoff_; }                            // Å
  const std::vector<std::string> &elements() const { return elements_; }
  const std::string &model() const { return model_; }
  // False for a model that predicts forces directly (metadata forces = "direct"): its forces are
  // not -dE/dx, so MD does not conserve energy, and its virial is zero.
  bool conservative() const { return conservative_; }

  // "H C O", or "H to Og (118 elements)" for a long list: for messages.
  std::string elements_summary() const;

  // The symbols among `symbols` that the model does not accept, in their given order.
  std::vector<std::string> unknown_elements(const std::vector<std::string> &symbols) const;

  Prediction predict(const Graph &graph) const;

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  std::string path_, model_, dtype_, device_;
  double cutoff_ = 0;
  bool conservative_ = true;
  std::vector<std::string> elements_;
};

// "H C O" -> {"H", "C", "O"}.
std::vector<std::string> split_words(const std::string &text);

// "a, b" from {"a", "b"}.
std::string join(const std::vector<std::string> &words, const std::string &separator = " ");

}  // namespace sciml
