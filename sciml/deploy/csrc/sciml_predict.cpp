// sciml_predict: energy and forces of one extxyz frame from a sciml .pt2 package.
//
//   sciml_predict model.pt2 structure.extxyz [frame]
//
// Reads frame `frame` (default 0) of an extended-XYZ file as ase writes it (Lattice="...",
// Properties=species:S:1:pos:R:3:..., pbc="T T T"), builds the periodic neighbour list within the
// model's cutoff by brute force over images, runs the package and prints, with 17 significant digits:
//   energy <eV>
//   forces            (then N lines: fx fy fz in eV/Å)
//   virial            (then 3 lines of the 3x3 virial in eV)
#include "sciml_package.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

namespace {

struct Frame {
  std::vector<std::string> species;
  std::vector<double> positions;  // (N, 3) Å
  double cell[9] = {0};           // rows = lattice vectors, zeros without a Lattice
  bool pbc[3] = {false, false, false};
};

// key=value pairs of an extxyz comment line; values may be "quoted" and keys are case-insensitive.
std::map<std::string, std::string> comment_fields(const std::string &line) {
  std::map<std::string, std::string> fields;
  size_t k = 0;
  while (k < line.size()) {
    while (k < line.size() && std::isspace(static_cast<unsigned char>(line[k]))) ++k;
    size_t start = k;
    while (k < line.size() && line[k] != '=' && !std::isspace(static_cast<unsigned char>(line[k]))) ++k;
    std::string key = line.substr(start, k - start);
    for (auto &c : key) c = char(std::tolower(static_cast<unsigned char>(c)));
    std::string value;
    if (k < line.size() && line[k] == '=') {
      ++k;
      if (k < line.size() && (line[k] == '"' || line[k] == '\'')) {
        const char quote = line[k++];
        size_t end = line.find(quote, k);
        if (end == std::string::npos) throw std::runtime_error("unterminated quote in extxyz comment line");
        value = line.substr(k, end - k);
        k = end + 1;
      } else {
        start = k;
        while (k < line.size() && !std::isspace(static_cast<unsigned char>(line[k]))) ++k;
        value = line.substr(start, k - start);
      }
    }
    if (!key.empty()) fields[key] = value;
  }
  return fields;
}

Frame read_frame(const std::string &path, int index) {
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open " + path);
  std::string line;
  for (int frame = 0;; ++frame) {
    if (!std::getline(file, line)) throw std::runtime_error(path + " has no frame " + std::to_string(index));
    const int n = std::stoi(line);
    if (frame < index) {
      for (int k = 0; k <= n; ++k) std::getline(file, line);
      continue;
    }
    std::getline(file, line);
    auto fields = comment_fields(line);
    Frame out;
    if (fields.count("lattice")) {
      std::istringstream lattice(fields["lattice"]);
      for (double &v : out.cell)
        if (!(lattice >> v)) throw std::runtime_error(path + ": Lattice needs 9 numbers");
      for (bool &p : out.pbc) p = true;
    }
    if (fields.count("pbc")) {
      auto flags = sciml::split_words(fields["pbc"]);
      if (flags.size() != 3) throw std::runtime_error(path + ": pbc needs 3 flags");
      for (int d = 0; d < 3; ++d) out.pbc[d] = flags[d] == "T" || flags[d] == "True" || flags[d] == "1";
    }
    // Columns of species and pos from Properties=name:type:count:...
    std::string properties = fields.count("properties") ? fields["properties"] : "species:S:1:pos:R:3";
    int column = 0, species_column = -1, pos_column = -1;
    std::istringstream items(properties);
    for (std::string name, type, count; std::getline(items, name, ':') && std::getline(items, type, ':') &&
                                        std::getline(items, count, ':');) {
      if (name == "species") species_column = column;
      if (name == "pos") pos_column = column;
      column += std::stoi(count);
    }
    if (species_column < 0 || pos_column < 0) throw std::runtime_error(path + ": Properties lacks species or pos");
    for (int atom = 0; atom < n; ++atom) {
      if (!std::getline(file, line)) throw std::runtime_error(path + ": frame ends before its " + std::to_string(n) + " atoms");
      auto words = sciml::split_words(line);
      if (int(words.size()) < column) throw std::runtime_error(path + ": atom line has fewer columns than Properties");
      out.species.push_back(words[species_column]);
      for (int d = 0; d < 3; ++d) out.positions.push_back(std::stod(words[pos_column + d]));
    }
    return out;
  }
}

// 3x3 inverse of a row-major matrix.
void invert(const double *m, double *inverse) {
  const double det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6]) +
                     m[2] * (m[3] * m[7] - m[4] * m[6]);
  if (std::fabs(det) < 1e-12) throw std::runtime_error("the cell is singular; give a Lattice with volume");
  inverse[0] = (m[4] * m[8] - m[5] * m[7]) / det, inverse[1] = (m[2] * m[7] - m[1] * m[8]) / det;
  inverse[2] = (m[1] * m[5] - m[2] * m[4]) / det, inverse[3] = (m[5] * m[6] - m[3] * m[8]) / det;
  inverse[4] = (m[0] * m[8] - m[2] * m[6]) / det, inverse[5] = (m[2] * m[3] - m[0] * m[5]) / det;
  inverse[6] = (m[3] * m[7] - m[4] * m[6]) / det, inverse[7] = (m[1] * m[6] - m[0] * m[7]) / det;
  inverse[8] = (m[0] * m[4] - m[1] * m[3]) / det;
}

// Every (i, j, S) with |x_j - x_i + S @ cell| < cutoff, i != j or S != 0, S zero along open directions.
void build_edges(const Frame &frame, double cutoff, sciml::Graph &graph) {
  const int n = int(frame.species.size());
  const bool periodic = frame.pbc[0] || frame.pbc[1] || frame.pbc[2];
  double inverse[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  int reach[3] = {0, 0, 0};  // images needed each way: cutoff over the spacing of lattice planes
  if (periodic) {
    invert(frame.cell, inverse);
    for (int d = 0; d < 3; ++d) {
      const double norm = std::sqrt(inverse[d] * inverse[d] + inverse[3 + d] * inverse[3 + d] + inverse[6 + d] * inverse[6 + d]);
      reach[d] = frame.pbc[d] ? int(std::ceil(cutoff * norm)) : 0;
    }
  }
  std::vector<int64_t> centres, neighbours;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      double delta[3], base[3] = {0, 0, 0};
      for (int d = 0; d < 3; ++d) delta[d] = frame.positions[3 * j + d] - frame.positions[3 * i + d];
      // Start from the image nearest in fractional coordinates, so unwrapped positions work too.
      for (int d = 0; d < 3 && periodic; ++d)
        if (frame.pbc[d])
          base[d] = -std::round(delta[0] * inverse[d] + delta[1] * inverse[3 + d] + delta[2] * inverse[6 + d]);
      for (int a = -reach[0]; a <= reach[0]; ++a)
        for (int b = -reach[1]; b <= reach[1]; ++b)
          for (int c = -reach[2]; c <= reach[2]; ++c) {
            const double shift[3] = {base[0] + a, base[1] + b, base[2] + c};
            if (i == j && shift[0] == 0 && shift[1] == 0 && shift[2] == 0) continue;
            double r2 = 0;
            for (int d = 0; d < 3; ++d) {
              const double v = delta[d] + shift[0] * frame.cell[d] + shift[1] * frame.cell[3 + d] + shift[2] * frame.cell[6 + d];
              r2 += v * v;
            }
            if (r2 >= cutoff * cutoff) continue;
            centres.push_back(i), neighbours.push_back(j);
            graph.cell_shifts.insert(graph.cell_shifts.end(), shift, shift + 3);
          }
    }
  graph.edge_index = centres;
  graph.edge_index.insert(graph.edge_index.end(), neighbours.begin(), neighbours.end());
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 3 || argc > 4) {
    std::cerr << "usage: sciml_predict model.pt2 structure.extxyz [frame]\n";
    return 2;
  }
  try {
    const sciml::Package package(argv[1]);
    const Frame frame = read_frame(argv[2], argc == 4 ? std::stoi(argv[3]) : 0);
    const auto unknown = package.unknown_elements(frame.species);
    if (!unknown.empty())
      throw std::runtime_error(std::string(argv[2]) + " has elements the model does not know: " + sciml::join(unknown) +
                               " (it knows " + package.elements_summary() + ")");
    sciml::Graph graph;
    graph.positions = frame.positions;
    for (const auto &symbol : frame.species) graph.numbers.push_back(sciml::atomic_number(symbol));
    std::copy(frame.cell, frame.cell + 9, graph.cell);
    build_edges(frame, package.cutoff(), graph);
    const sciml::Prediction prediction = package.predict(graph);
    std::printf("energy %.17g\nforces\n", prediction.energy);
    for (size_t i = 0; i < frame.species.size(); ++i)
      std::printf("%.17g %.17g %.17g\n", prediction.forces[3 * i], prediction.forces[3 * i + 1], prediction.forces[3 * i + 2]);
    std::printf("virial\n");
    for (int r = 0; r < 3; ++r)
      std::printf("%.17g %.17g %.17g\n", prediction.virial[3 * r], prediction.virial[3 * r + 1], prediction.virial[3 * r + 2]);
  } catch (const std::exception &err) {
    std::cerr << "sciml_predict: error: " << err.what() << "\n";
    return 1;
  }
  return 0;
}
