// SPDX-License-Identifier: Apache-2.0
//
// Row and column sums of grad**2 for Ember's statistics on CPU, as an XLA FFI
// handler.
//
// XLA:CPU runs a reduction on one core and streams the gradient once per
// reduction. This kernel reads the gradient once, on every thread of XLA's own
// intra-op pool, and writes per-block partial column sums that the caller adds
// in a fixed order, so results do not depend on how blocks meet threads.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Eight lanes: one AVX register, or two SSE registers on the baseline build.
typedef float Floats __attribute__((vector_size(32)));
typedef uint32_t Words __attribute__((vector_size(32)));
typedef uint16_t HalfWords __attribute__((vector_size(16)));
constexpr int64_t kLanes = 8;

inline Floats LoadFloats(const float* values) {
  Floats x;
  std::memcpy(&x, values, sizeof(x));
  return x;
}

// bfloat16 is the top half of a float32.
inline Floats LoadFloats(const uint16_t* bfloat16_bits) {
  HalfWords bits;
  std::memcpy(&bits, bfloat16_bits, sizeof(bits));
  return reinterpret_cast<Floats>(__builtin_convertvector(bits, Words) << 16);
}

inline float ToFloat(float x) { return x; }

inline float ToFloat(uint16_t bfloat16_bits) {
  const uint32_t bits = static_cast<uint32_t>(bfloat16_bits) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

// Sums of squares of `rows` consecutive rows into row_sums, and their column
// sums into col_sums, which this overwrites. One row at a time: a single
// stream through memory keeps the loop at the memory's speed, and the column
// sums stay in L1.
template <typename T>
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void SumBlock(const T* grad, int64_t rows, int64_t cols, float* row_sums,
              float* col_sums) {
  std::fill(col_sums, col_sums + cols, 0.0f);
  const int64_t vector_cols = cols - cols % kLanes;
  for (int64_t row = 0; row < rows; ++row) {
    const T* values = grad + row * cols;
    Floats lanes = {};
    for (int64_t j = 0; j < vector_cols; j += kLanes) {
      const Floats x = LoadFloats(values + j);
      const Floats squares = x * x;
      lanes += squares;
      const Floats column = LoadFloats(col_sums + j) + squares;
      std::memcpy(col_sums + j, &column, sizeof(column));
    }
    float sum = 0.0f;
    for (int64_t k = 0; k < kLanes; ++k) sum += lanes[k];
    for (int64_t j = vector_cols; j < cols; ++j) {
      const float square = ToFloat(values[j]) * ToFloat(values[j]);
      sum += square;
      col_sums[j] += square;
    }
    row_sums[row] = sum;
  }
}

// Blocks still to claim and blocks finished, shared with pool tasks that may
// start after the handler has returned (they then find nothing to claim).
struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
  std::mutex mutex;
  std::condition_variable all_finished;
};

template <typename T>
ffi::Error SquaredSums(ffi::ThreadPool pool, const T* grad,
                       ffi::Span<const int64_t> dims, float* row_sums,
                       float* col_partials, int64_t partials) {
  const int64_t rank = dims.size();
  const int64_t rows = dims[rank - 2];
  const int64_t cols = dims[rank - 1];
  int64_t tables = 1;
  for (int64_t axis = 0; axis < rank - 2; ++axis) tables *= dims[axis];
  const int64_t blocks = tables * partials;

  // Captures only values: a task that starts late must not touch the stack.
  auto run_block = [=](int64_t block) {
    const int64_t table = block / partials;
    const int64_t part = block % partials;
    const int64_t begin = rows * part / partials;
    const int64_t end = rows * (part + 1) / partials;
    const int64_t first_row = table * rows + begin;
    SumBlock(grad + first_row * cols, end - begin, cols, row_sums + first_row,
             col_partials + block * cols);
  };
  auto progress = std::make_shared<Progress>();
  auto drain = [progress, run_block, blocks] {
    for (int64_t block = progress->next++; block < blocks;
         block = progress->next++) {
      run_block(block);
      if (++progress->finished == blocks) {
        std::lock_guard<std::mutex> lock(progress->mutex);
        progress->all_finished.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), blocks) - 1;
  for (int64_t helper = 0; helper < helpers; ++helper) {
    pool.Schedule(std::function<void()>(drain));
  }
  // The calling thread works too, so the handler finishes even if no pool task
  // ever starts.
  drain();
  std::unique_lock<std::mutex> lock(progress->mutex);
  progress->all_finished.wait(
      lock, [&] { return progress->finished.load() == blocks; });
  return ffi::Error::Success();
}

ffi::Error SquaredSumsDispatch(ffi::ThreadPool pool, ffi::AnyBuffer grad,
                               ffi::Result<ffi::AnyBuffer> row_sums,
                               ffi::Result<ffi::AnyBuffer> col_partials) {
  const auto dims = grad.dimensions();
  const auto partial_dims = col_partials->dimensions();
  if (dims.size() < 2 || partial_dims.size() != dims.size() ||
      row_sums->element_type() != ffi::DataType::F32 ||
      col_partials->element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument(
        "ember_squared_sums: expects a gradient of rank >= 2 and float32 "
        "outputs of shapes (..., V) and (..., P, D)");
  }
  const int64_t partials = partial_dims[partial_dims.size() - 2];
  float* rows = row_sums->typed_data<float>();
  float* cols = col_partials->typed_data<float>();
  switch (grad.element_type()) {
    case ffi::DataType::F32:
      return SquaredSums(pool, grad.typed_data<float>(), dims, rows, cols,
                         partials);
    case ffi::DataType::BF16:
      return SquaredSums(pool,
                         static_cast<const uint16_t*>(grad.untyped_data()),
                         dims, rows, cols, partials);
    default:
      return ffi::Error::InvalidArgument(
          "ember_squared_sums: the gradient must be float32 or bfloat16");
  }
}

}  // namespace

// Exported whatever the default symbol visibility of the build.
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error*
EmberSquaredSums(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(EmberSquaredSums, SquaredSumsDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
