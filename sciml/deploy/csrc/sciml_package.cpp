// Loading and running a sciml .pt2 package; see sciml_package.h.
#include "sciml_package.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>
#include <torch/cuda.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace sciml {

namespace {

const char *const kSymbols[] = {
    "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si", "P",
    "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru", "Rh",
    "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd",
    "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",  "Re",
    "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th",
    "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db",
    "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};

using Metadata = std::unordered_map<std::string, std::string>;

std::string required(const Metadata &metadata, const std::string &key, const std::string &path) {
  auto found = metadata.find(key);
  if (found == metadata.end())
    throw std::runtime_error(path + " is not a sciml package: its metadata has no '" + key +
                             "' (export it with sciml.deploy.export)");
  return found->second;
}

// "2.13.0+cpu" -> "2.13.0": packages are tied to the torch release that compiled them.
std::string release(const std::string &version) { return version.substr(0, version.find_first_of("+ ")); }

}  // namespace

int64_t atomic_number(const std::string &symbol) {
  for (int64_t z = 0; z < int64_t(sizeof(kSymbols) / sizeof(*kSymbols)); ++z)
    if (symbol == kSymbols[z]) return z + 1;
  return 0;
}

std::vector<std::string> split_words(const std::string &text) {
  std::istringstream stream(text);
  std::vector<std::string> words;
  for (std::string word; stream >> word;) words.push_back(word);
  return words;
}

std::string join(const std::vector<std::string> &words, const std::string &separator) {
  std::string out;
  for (size_t k = 0; k < words.size(); ++k) out += (k ? separator : "") + words[k];
  return out;
}

Package::Package(const std::string &path) : path_(path) {
  Metadata metadata;
  try {
    metadata = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
  } catch (const std::exception &) {
    throw std::runtime_error("cannot read " + path + " as an AOTInductor package (.pt2 from sciml.deploy.export)");
  }
  if (required(metadata, "sciml_format", path) != "1")
    throw std::runtime_error(path + " has sciml_format " + metadata["sciml_format"] + "; this build reads format 1");
  const std::string built_with = required(metadata, "torch_version", path);
  const std::string linked = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                             std::to_string(TORCH_VERSION_PATCH);
  if (release(built_with) != linked)
    throw std::runtime_error(path + " was exported with torch " + built_with + " but this program uses torch " +
                             linked + "; re-export the model with the torch this program was built against");
  const std::string device = required(metadata, "device", path);
  if (device.rfind("cuda", 0) == 0 && !torch::cuda::is_available())
    throw std::runtime_error(path + " was exported for " + device +
                             " but this libtorch has no CUDA device; re-export it with device='cpu'");
  if (device != "cpu" && device.rfind("cuda", 0) != 0)
    throw std::runtime_error(path + " was exported for device '" + device + "'; only cpu and cuda are supported");
  device_ = device;
  model_ = required(metadata, "model", path);
  dtype_ = required(metadata, "dtype", path);
  if (dtype_ != "float32" && dtype_ != "float64")
    throw std::runtime_error(path + " has dtype '" + dtype_ + "'; expected float32 or float64");
  elements_ = split_words(required(metadata, "elements", path));
  conservative_ = metadata.count("forces") == 0 || metadata["forces"] != "direct";
  try {
    cutoff_ = std::stod(required(metadata, "cutoff", path));
  } catch (const std::invalid_argument &) {
    throw std::runtime_error(path + " has a cutoff that is not a number: '" + metadata["cutoff"] + "'");
  }
  try {
    loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model");
  } catch (const std::exception &err) {
    std::string message = err.what();
    throw std::runtime_error("loading " + path + " failed: " + message.substr(0, message.find('\n')));
  }
}

Package::~Package() = default;

std::string Package::elements_summary() const {
  if (elements_.size() <= 12) return join(elements_);
  return elements_.front() + " to " + elements_.back() + " (" + std::to_string(elements_.size()) + " elements)";
}

std::vector<std::string> Package::unknown_elements(const std::vector<std::string> &symbols) const {
  std::vector<std::string> unknown;
  for (const auto &symbol : symbols)
    if (std::find(elements_.begin(), elements_.end(), symbol) == elements_.end()) unknown.push_back(symbol);
  return unknown;
}

Prediction Package::predict(const Graph &graph) const {
  const int64_t n = int64_t(graph.numbers.size());
  const int64_t e = int64_t(graph.edge_index.size() / 2);
  const auto dtype = dtype_ == "float32" ? at::kFloat : at::kDouble;
  const c10::Device device(device_);
  const auto as_float = [&](const double *data, std::vector<int64_t> shape) {
    return at::from_blob(const_cast<double *>(data), shape, at::kDouble).to(device, dtype);
  };
  const auto as_long = [&](const int64_t *data, std::vector<int64_t> shape) {
    return at::from_blob(const_cast<int64_t *>(data), shape, at::kLong).to(device);
  };
  std::vector<at::Tensor> inputs = {
      as_float(graph.positions.data(), {n, 3}), as_long(graph.numbers.data(), {n}), as_float(graph.cell, {3, 3}),
      as_long(graph.edge_index.data(), {2, e}), as_float(graph.cell_shifts.data(), {e, 3})};
  std::vector<at::Tensor> outputs;
  try {
    outputs = loader_->run(inputs);
  } catch (const std::exception &err) {
    std::string message = err.what();
    throw std::runtime_error("running " + path_ + " failed: " + message.substr(0, message.find('\n')));
  }
  if (outputs.size() != 4)
    throw std::runtime_error(path_ + " returned " + std::to_string(outputs.size()) +
                             " outputs; a sciml package returns (energy, energies, forces, virial)");
  const auto to_vector = [](const at::Tensor &t) {
    at::Tensor values = t.detach().to(at::kCPU, at::kDouble).contiguous();
    return std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
  };
  Prediction prediction;
  prediction.energy = to_vector(outputs[0]).at(0);
  prediction.energies = to_vector(outputs[1]);
  prediction.forces = to_vector(outputs[2]);
  const std::vector<double> virial = to_vector(outputs[3]);
  std::copy(virial.begin(), virial.end(), prediction.virial);
  return prediction;
}

}  // namespace sciml
