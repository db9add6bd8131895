// The sciml operator library: the schemas of every compiled sciml kernel in the torch.library
// namespace "sciml", and their CPU implementations.
//
// The numerical CPU kernels are plain C, generated or specialised per problem and compiled per
// machine with -march=native (sciml/ops/cbuild.py); this file knows nothing of their contents.
// An operator receives its kernel as a string "path/to/kernel.so:symbol" (several joined by
// newlines where an operator may need one per output slot), loads it once with dlopen and calls
// it on the tensors' storage. So torch sees ordinary operators (dispatcher, autograd, fake
// tensors, torch.compile, make_fx) while the kernels keep their per-machine code generation.
// Fake (meta) implementations, autograd formulas, autocast rules and the CUDA/Triton
// implementations are registered from Python (sciml/ops/library.py); this file is built with
// torch.utils.cpp_extension (JIT, cached by torch version, compiler and CPU).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

// The function named by "path:symbol", loaded once per process.
void* load_symbol(const std::string& spec) {
  static std::mutex mutex;
  static std::unordered_map<std::string, void*> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(spec);
  if (found != cache.end()) return found->second;
  const auto colon = spec.rfind(':');
  TORCH_CHECK(colon != std::string::npos && colon > 0, "sciml: malformed kernel name '", spec, "' (want path:symbol)");
  const std::string path = spec.substr(0, colon), name = spec.substr(colon + 1);
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  TORCH_CHECK(handle != nullptr, "sciml: cannot load the kernel library ", path, ": ", dlerror(),
              " (remove the kernel cache, SCIML_CACHE_DIR, to rebuild it)");
  void* function = dlsym(handle, name.c_str());
  TORCH_CHECK(function != nullptr, "sciml: kernel ", name, " not found in ", path);
  cache.emplace(spec, function);
  return function;
}

// Line ``index`` of a newline-separated list of kernel names.
std::string kernel_line(const std::string& kernels, int64_t index) {
  std::istringstream lines(kernels);
  std::string line;
  for (int64_t i = 0; std::getline(lines, line); ++i)
    if (i == index) return line;
  TORCH_CHECK(false, "sciml: no kernel for slot ", index, " in '", kernels, "'");
}

int threads() { return at::get_num_threads(); }

void check_cpu_real(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "sciml: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "sciml: ", name, " must be float32 or float64, got ", t.scalar_type());
}

// ------------------------------------------------------------------------- large outputs

// Outputs of kLargeOutput bytes or more (a product's output, the gradient of a premixed operand:
// tens of MB) would come fresh from mmap on every call, and first touching them page by page
// took as long as the kernel writing them (36 of 47 ms for 96 MB here). They are kept instead:
// a freed block waits in a cache for the next output of the same size (a training loop repeats
// its shapes), up to 512 MB in all by default. (Transparent huge pages were no cure: with many such
// blocks alive their faults took 5x longer than 4 kB ones on the machine measured.)
// SCIML_OUTPUT_CACHE_MB sets the cache's size (read once; 0 turns it off).
constexpr size_t kLargeOutput = size_t(4) << 20;

size_t cached_bytes_limit() {
  static const size_t limit = [] {
    const char* value = std::getenv("SCIML_OUTPUT_CACHE_MB");
    return (value != nullptr && *value != '\0' ? size_t(std::strtoull(value, nullptr, 10)) : size_t(512)) << 20;
  }();
  return limit;
}

struct Block {
  void* data;
  size_t nbytes;
};

struct OutputCache {
  std::mutex mutex;
  std::unordered_multimap<size_t, void*> free_blocks;  // nbytes -> block
  size_t cached = 0;
};

OutputCache& output_cache() {
  static OutputCache* cache = new OutputCache();  // never destroyed: deleters may run at exit
  return *cache;
}

void release_block(void* context) {
  auto* block = static_cast<Block*>(context);
  OutputCache& cache = output_cache();
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    if (cache.cached + block->nbytes <= cached_bytes_limit()) {
      cache.free_blocks.emplace(block->nbytes, block->data);
      cache.cached += block->nbytes;
      block->data = nullptr;
    }
  }
  std::free(block->data);
  delete block;
}

struct OutputAllocator final : at::Allocator {
  at::DataPtr allocate(size_t nbytes) override {
    void* data = take(nbytes);
    if (data == nullptr && nbytes && posix_memalign(&data, 64, nbytes) != 0) throw std::bad_alloc();
    return {data, new Block{data, nbytes}, &release_block, at::Device(at::kCPU)};
  }
  at::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

 private:
  static void* take(size_t nbytes) {
    OutputCache& cache = output_cache();
    std::lock_guard<std::mutex> lock(cache.mutex);
    auto found = cache.free_blocks.find(nbytes);
    if (found == cache.free_blocks.end()) return nullptr;
    void* data = found->second;
    cache.free_blocks.erase(found);
    cache.cached -= nbytes;
    return data;
  }
};

// An uninitialised contiguous CPU tensor of ``sizes``; large ones from the output cache.
at::Tensor output_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t nbytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (nbytes < kLargeOutput) return at::empty(sizes, options);
  static OutputAllocator allocator;
  at::Storage storage(at::Storage::use_byte_size_t(), nbytes, &allocator, /*resizable=*/true);
  return at::empty({0}, options).set_(storage, 0, sizes);
}

// ------------------------------------------------------------------------- tensor-product core

using CoreKernel = void (*)(int64_t, const int64_t*, const int64_t*, void* const*, const int64_t* const*,
                            const int64_t*, const int64_t* const*, const int64_t*, void*, int64_t,
                            const int64_t*, const int64_t*, const int64_t*, const double*, int);

constexpr int kCoreTables = 4;  // per output slot: paths, groups, offsets, values (sciml/ops/tensor_product/cpu.py)
constexpr int kSelections = kCoreTables * 4 + 3;  // then the plan's 3 tables, then one column selection per slot

// Slot ``slot``'s column selection (empty: operand column c is tensor column c), or an undefined tensor.
at::Tensor selection(at::TensorList tables, int64_t slot) {
  if (tables.size() <= static_cast<size_t>(kSelections + slot) || tables[kSelections + slot].numel() == 0) return at::Tensor();
  const at::Tensor columns = tables[kSelections + slot].contiguous();
  TORCH_CHECK(columns.scalar_type() == at::kLong && columns.dim() == 1, "sciml::tp_core: malformed column selection");
  return columns;
}

// The inputs of the kernel for ``out_slot``: the other three slots, the scale slot (2) last.
std::vector<int64_t> input_order(int64_t out_slot) {
  std::vector<int64_t> order;
  for (int64_t slot : {0, 1, 3, 2})
    if (slot != out_slot) order.push_back(slot);
  return order;
}

at::Tensor run_core(const std::optional<at::Tensor> (&operands)[4], const std::optional<at::Tensor> (&maps)[4],
                    at::TensorList tables, at::IntArrayRef widths, const std::string& kernels, int64_t out_slot,
                    int64_t out_rows, int64_t num_terms) {
  const auto inputs = input_order(out_slot);
  std::vector<at::Tensor> tensors;
  std::vector<at::Tensor> rowmaps;
  for (int64_t slot : inputs) {
    TORCH_CHECK(operands[slot].has_value(), "sciml::tp_core: operand ", slot, " is missing");
    check_cpu_real(*operands[slot], "operand");
    TORCH_CHECK(operands[slot]->scalar_type() == operands[inputs[0]]->scalar_type(),
                "sciml::tp_core: operands must share one dtype");
    TORCH_CHECK(operands[slot]->dim() == 2 && operands[slot]->size(1) == widths[slot],
                "sciml::tp_core: operand ", slot, " must be (rows, ", widths[slot], ")");
    tensors.push_back(operands[slot]->contiguous());
    rowmaps.push_back(maps[slot].has_value() ? maps[slot]->contiguous() : at::Tensor());
  }
  const auto options = tensors[0].options();
  const at::Tensor out_map = maps[out_slot].has_value() ? maps[out_slot]->contiguous() : at::Tensor();
  if (out_map.defined() && out_rows * 64 < num_terms) {
    // few output rows (e.g. the gradient of shared weights): per-term rows in parallel, then reduce
    std::optional<at::Tensor> per_term_maps[4] = {maps[0], maps[1], maps[2], maps[3]};
    per_term_maps[out_slot] = std::nullopt;
    at::Tensor per_term = run_core(operands, per_term_maps, tables, widths, kernels, out_slot, num_terms, num_terms);
    return at::zeros({out_rows, widths[out_slot]}, options).index_add_(0, out_map, per_term);
  }
  at::Tensor out = output_empty({out_rows, widths[out_slot]}, options);
  if (out_rows == 0) return out;
  // CSR of the terms grouped by output row: a stable sort keeps each row's terms in order
  const auto index_options = at::TensorOptions().dtype(at::kLong);
  at::Tensor ptr, order;
  if (out_map.defined()) {
    order = std::get<1>(out_map.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false)).contiguous();
    ptr = at::zeros({out_rows + 1}, index_options);
    ptr.slice(0, 1).copy_(at::cumsum(at::bincount(out_map, {}, out_rows), 0));
  } else {
    TORCH_CHECK(out_rows == num_terms, "sciml::tp_core: without a row map the output has one row per term");
    ptr = at::arange(num_terms + 1, index_options);
  }
  const at::Tensor* program = tables.data() + kCoreTables * out_slot;
  const at::Tensor paths = program[0].contiguous(), groups = program[1].contiguous();
  const at::Tensor offsets = program[2].contiguous(), values = program[3].contiguous();
  TORCH_CHECK(paths.scalar_type() == at::kLong && groups.scalar_type() == at::kLong &&
                  offsets.scalar_type() == at::kLong && values.scalar_type() == at::kDouble,
              "sciml::tp_core: malformed plan tables");
  void* input_pointers[3];
  const int64_t* map_pointers[3];
  int64_t slot_widths[4];
  const int64_t* column_pointers[4];
  int64_t selected[4];
  const int64_t slots[4] = {inputs[0], inputs[1], inputs[2], out_slot};
  at::Tensor columns[4];
  for (int k = 0; k < 4; ++k) {
    columns[k] = selection(tables, slots[k]);
    slot_widths[k] = widths[slots[k]];
    column_pointers[k] = columns[k].defined() ? columns[k].data_ptr<int64_t>() : nullptr;
    selected[k] = columns[k].defined() ? columns[k].numel() : widths[slots[k]];
    if (columns[k].defined() && columns[k].numel())
      TORCH_CHECK(columns[k].min().item<int64_t>() >= 0 && columns[k].max().item<int64_t>() < widths[slots[k]],
                  "sciml::tp_core: column selection of slot ", slots[k], " outside its ", widths[slots[k]], " columns");
  }
  for (int k = 0; k < 3; ++k) {
    input_pointers[k] = tensors[k].data_ptr();
    map_pointers[k] = rowmaps[k].defined() ? rowmaps[k].data_ptr<int64_t>() : nullptr;
  }
  auto kernel = reinterpret_cast<CoreKernel>(load_symbol(kernel_line(kernels, out_slot)));
  kernel(out_rows, ptr.data_ptr<int64_t>(), order.defined() ? order.data_ptr<int64_t>() : nullptr, input_pointers,
         map_pointers, slot_widths, column_pointers, selected, out.data_ptr(), paths.size(0), paths.data_ptr<int64_t>(),
         groups.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), values.data_ptr<double>(), threads());
  return out;
}

at::Tensor tp_core_cpu(const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& b,
                       const std::optional<at::Tensor>& s, const std::optional<at::Tensor>& o,
                       const std::optional<at::Tensor>& map_a, const std::optional<at::Tensor>& map_b,
                       const std::optional<at::Tensor>& map_s, const std::optional<at::Tensor>& map_o,
                       at::TensorList tables, at::IntArrayRef widths, const std::string& kernels, int64_t out_slot,
                       int64_t out_rows, int64_t num_terms, const std::string& backend) {
  TORCH_CHECK(backend == "cpu", "sciml::tp_core on CPU tensors runs the cpu backend, not '", backend, "'");
  TORCH_CHECK(out_slot >= 0 && out_slot < 4 && widths.size() == 4, "sciml::tp_core: bad out_slot or widths");
  TORCH_CHECK(tables.size() >= static_cast<size_t>(kCoreTables * 4), "sciml::tp_core: missing plan tables");
  const std::optional<at::Tensor> operands[4] = {a, b, s, o};
  const std::optional<at::Tensor> maps[4] = {map_a, map_b, map_s, map_o};
  TORCH_CHECK(!operands[out_slot].has_value(), "sciml::tp_core: the output slot must be None");
  return run_core(operands, maps, tables, widths, kernels, out_slot, out_rows, num_terms);
}

using GradientsKernel = void (*)(int64_t, void* const*, void* const*, const int64_t*, const int64_t* const*,
                                 const int64_t*, int64_t, const int64_t*, const int64_t*, const double*, int);

std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_core_gradients_cpu(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& s, const at::Tensor& grad, const at::Tensor& paths,
    const at::Tensor& indices, const at::Tensor& values, at::TensorList columns, at::IntArrayRef widths,
    const std::string& kernel) {
  for (const at::Tensor* t : {&a, &b, &s, &grad}) check_cpu_real(*t, "operand");
  TORCH_CHECK(widths.size() == 4 && columns.size() == 4, "sciml::tp_core_gradients: widths and columns need 4 entries");
  const at::Tensor tensors[4] = {a.contiguous(), b.contiguous(), s.contiguous(), grad.contiguous()};
  const at::Tensor pc = paths.contiguous(), ic = indices.contiguous(), vc = values.contiguous();
  at::Tensor grads[3];
  for (int k = 0; k < 3; ++k) grads[k] = output_empty(tensors[k].sizes(), tensors[k].options());
  void* tensor_pointers[4];
  void* grad_pointers[3];
  const int64_t* column_pointers[4];
  int64_t w[4], selected[4];
  at::Tensor kept[4];
  for (int k = 0; k < 4; ++k) {
    TORCH_CHECK(tensors[k].dim() == 2 && tensors[k].size(1) == widths[k], "sciml::tp_core_gradients: operand ", k,
                " must be (rows, ", widths[k], ")");
    kept[k] = columns[k].contiguous();
    tensor_pointers[k] = tensors[k].data_ptr();
    if (k < 3) grad_pointers[k] = grads[k].data_ptr();
    w[k] = widths[k];
    column_pointers[k] = kept[k].numel() ? kept[k].data_ptr<int64_t>() : nullptr;
    selected[k] = kept[k].numel() ? kept[k].numel() : widths[k];
  }
  auto function = reinterpret_cast<GradientsKernel>(load_symbol(kernel));
  function(tensors[0].size(0), tensor_pointers, grad_pointers, w, column_pointers, selected, pc.size(0),
           pc.data_ptr<int64_t>(), ic.data_ptr<int64_t>(), vc.data_ptr<double>(), threads());
  return {grads[0], grads[1], grads[2]};
}

// ------------------------------------------------------------------------- column permutation

using GatherKernel = void (*)(int64_t, int64_t, const void*, const int64_t*, void*, int);

at::Tensor permute_columns_cpu(const at::Tensor& x, const at::Tensor& columns, const at::Tensor& inverse,
                               const std::string& kernel) {
  check_cpu_real(x, "x");
  TORCH_CHECK(x.dim() == 2 && columns.dim() == 1 && columns.size(0) == x.size(1),
              "sciml::permute_columns: columns must permute the columns of a 2-d tensor");
  const at::Tensor xc = x.contiguous(), cc = columns.contiguous();
  at::Tensor out = output_empty(xc.sizes(), xc.options());
  auto function = reinterpret_cast<GatherKernel>(load_symbol(kernel));
  function(xc.size(0), xc.size(1), xc.data_ptr(), cc.data_ptr<int64_t>(), out.data_ptr(), threads());
  return out;
}

// ------------------------------------------------------------------------- spherical harmonics

using PointsKernel = void (*)(int64_t, const void*, void*, int);
using PointsBackwardKernel = void (*)(int64_t, const void*, const void*, void*, int);

at::Tensor spherical_harmonics_cpu(const at::Tensor& points, const std::string& kernels, int64_t dim,
                                   at::IntArrayRef ls, const std::string& normalization, bool normalize) {
  check_cpu_real(points, "points");
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3, "sciml::spherical_harmonics: points must be (N, 3)");
  const at::Tensor pc = points.contiguous();
  at::Tensor out = at::empty({pc.size(0), dim}, pc.options());
  auto function = reinterpret_cast<PointsKernel>(load_symbol(kernel_line(kernels, 0)));
  function(pc.size(0), pc.data_ptr(), out.data_ptr(), threads());
  return out;
}

at::Tensor spherical_harmonics_backward_cpu(const at::Tensor& points, const at::Tensor& grad,
                                            const std::string& kernels, int64_t max_degree) {
  check_cpu_real(points, "points");
  const at::Tensor pc = points.contiguous(), gc = grad.contiguous();
  at::Tensor out = at::empty_like(pc);
  if (max_degree == 0) return out.zero_();
  auto function = reinterpret_cast<PointsBackwardKernel>(load_symbol(kernel_line(kernels, 1)));
  function(pc.size(0), pc.data_ptr(), gc.data_ptr(), out.data_ptr(), threads());
  return out;
}

// ------------------------------------------------------------------------- Wigner-D blocks

using WignerKernel = int (*)(int64_t, const void*, void*, int);
using WignerBackwardKernel = int (*)(int64_t, const void*, const void*, void*, int);

at::Tensor wigner_blocks_cpu(const at::Tensor& rotations, const std::string& kernels, int64_t lmax) {
  check_cpu_real(rotations, "rotations");
  TORCH_CHECK(rotations.dim() == 3 && rotations.size(1) == 3 && rotations.size(2) == 3,
              "sciml::wigner_blocks: rotations must be (E, 3, 3)");
  const at::Tensor rc = rotations.contiguous();
  int64_t per_edge = 0;
  for (int64_t l = 0; l <= lmax; ++l) per_edge += (2 * l + 1) * (2 * l + 1);
  at::Tensor out = at::empty({rc.size(0) * per_edge}, rc.options());
  auto function = reinterpret_cast<WignerKernel>(load_symbol(kernel_line(kernels, 0)));
  TORCH_CHECK(function(rc.size(0), rc.data_ptr(), out.data_ptr(), threads()) == 0,
              "sciml::wigner_blocks: the kernel could not allocate its scratch memory");
  return out;
}

at::Tensor wigner_blocks_backward_cpu(const at::Tensor& rotations, const at::Tensor& grad, const std::string& kernels,
                                      int64_t lmax) {
  check_cpu_real(rotations, "rotations");
  const at::Tensor rc = rotations.contiguous(), gc = grad.contiguous();
  at::Tensor out = at::empty_like(rc);
  if (lmax == 0) return out.zero_();
  auto function = reinterpret_cast<WignerBackwardKernel>(load_symbol(kernel_line(kernels, 1)));
  TORCH_CHECK(function(rc.size(0), rc.data_ptr(), gc.data_ptr(), out.data_ptr(), threads()) == 0,
              "sciml::wigner_blocks_backward: the kernel could not allocate its scratch memory");
  return out;
}

}  // namespace

TORCH_LIBRARY(sciml, m) {
  // The sparse tensor-product core (sciml/ops/tensor_product/core.py): four operand slots a, b,
  // s, o, the one at out_slot None; tables = per slot (paths, groups, offsets, values) of the CPU
  // program, then the plan's (paths, indices, values); kernels = one "path:symbol" per slot.
  m.def("tp_core(Tensor? a, Tensor? b, Tensor? s, Tensor? o, Tensor? map_a, Tensor? map_b, Tensor? map_s, "
        "Tensor? map_o, Tensor[] tables, int[] widths, str kernels, int out_slot, SymInt out_rows, "
        "SymInt num_terms, str backend) -> Tensor");
  m.def("tp_core_gradients(Tensor a, Tensor b, Tensor s, Tensor grad, Tensor paths, Tensor indices, "
        "Tensor values, Tensor[] columns, int[] widths, str kernel) -> (Tensor, Tensor, Tensor)");
  m.def("permute_columns(Tensor x, Tensor columns, Tensor inverse, str kernel) -> Tensor");
  m.def("spherical_harmonics(Tensor points, str kernels, int dim, int[] ls, str normalization, bool normalize) "
        "-> Tensor");
  m.def("spherical_harmonics_backward(Tensor points, Tensor grad, str kernels, int max_degree) -> Tensor");
  m.def("wigner_blocks(Tensor rotations, str kernels, int lmax) -> Tensor");
  m.def("wigner_blocks_backward(Tensor rotations, Tensor grad, str kernels, int lmax) -> Tensor");
}

TORCH_LIBRARY_IMPL(sciml, CPU, m) {
  m.impl("tp_core", &tp_core_cpu);
  m.impl("tp_core_gradients", &tp_core_gradients_cpu);
  m.impl("permute_columns", &permute_columns_cpu);
  m.impl("spherical_harmonics", &spherical_harmonics_cpu);
  m.impl("spherical_harmonics_backward", &spherical_harmonics_backward_cpu);
  m.impl("wigner_blocks", &wigner_blocks_cpu);
  m.impl("wigner_blocks_backward", &wigner_blocks_backward_cpu);
}
