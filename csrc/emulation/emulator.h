// A CUDA execution emulator: runs a kernel's own source on the CPU with real CUDA semantics.
//
// Kernels in csrc/cuda/*.cuh are plain CUDA (threadIdx, __shared__, __syncthreads, __shfl_xor_sync, atomicAdd).
// nvcc compiles them for the GPU; the host compiler compiles them again against this header, which defines those
// names. Each CUDA thread of a block becomes a fiber (ucontext) on one OS thread, so barriers are real: a fiber that
// reaches __syncthreads() is suspended until every thread of its block has reached it, and warp shuffles exchange
// values only once all lanes of the warp have arrived. Blocks run in parallel on OpenMP threads, each with its own
// copy of __shared__ memory (a function-local `static thread_local`).
//
// Schedules (set_schedule): kInOrder, the default, runs the threads of a block in order (thread 0 first), each until it
// reaches a barrier, and releases a warp's shuffle once every warp is waiting somewhere, so warps advance together.
// That order hides a missing barrier wherever a thread only reads what lower threads wrote, or where warps must not run
// ahead of each other. kReverse runs warps last to first and each warp's lanes last to first, and lets one warp run
// alone, through its shuffles, until it waits at __syncthreads() or exits: a warp races ahead of the others, as
// nothing on a GPU prevents. A kernel whose results differ between the two schedules has a race.
//
// Errors CUDA would leave undefined are reported: a barrier that some threads of the block never reach (they exited
// or wait at another barrier), and a warp-synchronous op issued while lanes of the warp have exited. The report
// names the kernel launch, block and thread.
//
// Cost: a context switch per thread per barrier (~0.1–1 µs), so the emulator is for tests on small shapes.
#pragma once

#ifdef __CUDACC__
#error "emulator.h is for the host compiler only; nvcc builds the real kernels"
#endif

#include <ucontext.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#define __global__
#define __device__
#define __host__
#define __restrict__
// One copy per OS thread = one copy per block, because a block's fibers never leave the OS thread that runs it.
#define __shared__ static thread_local

namespace df_emu {

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

class EmulationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class State : int { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

enum class Schedule : int { kInOrder, kReverse };

// The schedule of the launches that start from now on (the emulated register.cpp exposes it as set_schedule).
inline std::atomic<int>& schedule_setting() {
  static std::atomic<int> setting{static_cast<int>(Schedule::kInOrder)};
  return setting;
}
inline void set_schedule(Schedule s) { schedule_setting().store(static_cast<int>(s)); }
inline Schedule schedule() { return static_cast<Schedule>(schedule_setting().load()); }

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 64 * 1024;

struct Fiber {
  ucontext_t ctx;
  State state = State::kRunnable;
  dim3 thread_idx;
};

// Runs the threads of one block at a time; one per OS thread, reused across blocks and launches.
struct BlockRunner {
  const char* kernel_name = "";
  Schedule schedule = Schedule::kInOrder;
  dim3 grid_dim, block_dim, block_idx;
  std::vector<Fiber> fibers;
  std::vector<uint64_t> warp_slots;  // one 8-byte exchange slot per thread, for shuffles
  std::unique_ptr<char[]> stacks;
  size_t stack_capacity = 0;
  ucontext_t scheduler;
  int current = 0;
  const std::function<void()>* body = nullptr;

  int num_threads() const { return static_cast<int>(block_dim.x * block_dim.y * block_dim.z); }

  std::string where(int tid) const {
    std::ostringstream os;
    const dim3& t = fibers[tid].thread_idx;
    os << "kernel " << kernel_name << ", block (" << block_idx.x << "," << block_idx.y << "," << block_idx.z
       << "), thread (" << t.x << "," << t.y << "," << t.z << ")";
    return os.str();
  }

  void run_block(dim3 idx);
};

inline thread_local BlockRunner* tl_runner = nullptr;

inline BlockRunner& runner() { return *tl_runner; }
inline Fiber& self() { return runner().fibers[runner().current]; }
inline int linear_tid() {
  const auto& r = runner();
  const dim3& t = r.fibers[r.current].thread_idx;
  return static_cast<int>(t.x + r.block_dim.x * (t.y + r.block_dim.y * t.z));
}

inline void yield_with(State s) {
  Fiber& f = self();
  f.state = s;
  swapcontext(&f.ctx, &runner().scheduler);
}

inline void fiber_entry() {
  BlockRunner& r = runner();
  (*r.body)();
  r.fibers[r.current].state = State::kDone;
  // returning follows uc_link back to the scheduler
}

inline void BlockRunner::run_block(dim3 idx) {
  block_idx = idx;
  const int n = num_threads();
  if (stack_capacity < static_cast<size_t>(n)) {
    stacks.reset(new char[kStackBytes * n]);
    stack_capacity = n;
  }
  fibers.assign(n, Fiber{});
  warp_slots.assign(n, 0);
  for (int tid = 0; tid < n; ++tid) {
    Fiber& f = fibers[tid];
    f.thread_idx = dim3(tid % block_dim.x, (tid / block_dim.x) % block_dim.y, tid / (block_dim.x * block_dim.y));
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stacks.get() + kStackBytes * tid;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &scheduler;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  const int num_warps = (n + kWarpSize - 1) / kWarpSize;
  auto run = [&](int tid) {
    if (fibers[tid].state != State::kRunnable) return;
    current = tid;
    swapcontext(&scheduler, &fibers[tid].ctx);
  };
  for (;;) {
    if (schedule == Schedule::kInOrder) {
      for (int tid = 0; tid < n; ++tid) run(tid);
    } else {  // kReverse: a warp runs, its shuffles released at once, until it waits at __syncthreads() or is done
      for (int w = num_warps - 1; w >= 0; --w) {
        const int lo = w * kWarpSize, hi = std::min(n, lo + kWarpSize);
        for (;;) {
          for (int tid = hi - 1; tid >= lo; --tid) run(tid);
          int waiting = 0;
          for (int tid = lo; tid < hi; ++tid) waiting += fibers[tid].state == State::kAtWarpBarrier;
          if (waiting != hi - lo) break;  // errors (lanes exited, deadlock) are reported below
          for (int tid = lo; tid < hi; ++tid) fibers[tid].state = State::kRunnable;
        }
      }
    }
    // Everyone is done or waiting. Release warps whose live lanes all wait at a warp barrier.
    bool released = false, any_done = false, all_done = true;
    int first_block_waiter = -1;
    for (int w = 0; w < num_warps; ++w) {
      const int lo = w * kWarpSize, hi = std::min(n, lo + kWarpSize);
      int waiting = 0, done = 0;
      for (int tid = lo; tid < hi; ++tid) {
        waiting += fibers[tid].state == State::kAtWarpBarrier;
        done += fibers[tid].state == State::kDone;
      }
      if (waiting > 0 && done > 0)
        throw EmulationError("warp-synchronous operation while other lanes of the warp have exited (" +
                             where(lo) + " .. lane " + std::to_string(hi - lo - 1) + ")");
      if (waiting > 0 && waiting == hi - lo) {
        for (int tid = lo; tid < hi; ++tid) fibers[tid].state = State::kRunnable;
        released = true;
      }
    }
    if (released) continue;
    for (int tid = 0; tid < n; ++tid) {
      const State s = fibers[tid].state;
      any_done |= s == State::kDone;
      all_done &= s == State::kDone;
      if (s == State::kAtBlockBarrier && first_block_waiter < 0) first_block_waiter = tid;
    }
    if (all_done) return;
    for (int tid = 0; tid < n; ++tid) {
      if (fibers[tid].state == State::kAtWarpBarrier)
        throw EmulationError("deadlock: a warp-synchronous operation that some lanes never reach (" + where(tid) +
                             ")");
    }
    if (any_done)
      throw EmulationError("__syncthreads() not reached by every thread of the block: some exited first (" +
                           where(first_block_waiter) + " waits)");
    for (auto& f : fibers) f.state = State::kRunnable;
  }
}

// Names of the kernels launched so far in this process, so tests can check that every kernel was exercised.
struct LaunchLog {
  std::mutex mutex;
  std::set<std::string> names;
};
inline LaunchLog& launch_log() {
  static LaunchLog log;
  return log;
}

// Launches `kernel` over `grid` x `block` with the given arguments, like kernel<<<grid, block>>>(args...).
template <typename... KArgs, typename... Args>
void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, Args&&... args) {
  const long blocks = static_cast<long>(grid.x) * grid.y * grid.z;
  const long threads = static_cast<long>(block.x) * block.y * block.z;
  if (blocks == 0 || threads == 0) return;
  {
    std::lock_guard<std::mutex> lock(launch_log().mutex);
    launch_log().names.insert(name);
  }
  if (threads > 1024 || block.z > 64)
    throw EmulationError(std::string("invalid launch configuration for kernel ") + name +
                         ": more than 1024 threads per block");
  const std::function<void()> body = [&]() { kernel(args...); };
  const Schedule sched = schedule();
  std::string error;
#pragma omp parallel
  {
    thread_local BlockRunner local;
    BlockRunner* saved = tl_runner;
    tl_runner = &local;
    local.kernel_name = name;
    local.schedule = sched;
    local.grid_dim = grid;
    local.block_dim = block;
    local.body = &body;
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < blocks; ++b) {
      try {
        local.run_block(dim3(b % grid.x, (b / grid.x) % grid.y, b / (static_cast<long>(grid.x) * grid.y)));
      } catch (const std::exception& e) {
#pragma omp critical(df_emu_error)
        if (error.empty()) error = e.what();
      }
    }
    tl_runner = saved;
  }
  if (!error.empty()) throw EmulationError(error);
}

// ---- device-side API -------------------------------------------------------------------------------------------

inline void syncthreads() { yield_with(State::kAtBlockBarrier); }
inline void syncwarp() { yield_with(State::kAtWarpBarrier); }

// Exchange through the warp's slots: write, wait for the whole warp, read the source lane, wait again so that no
// lane overwrites its slot before every lane has read.
template <typename T>
T shuffle(T value, int src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "shuffle of this type");
  BlockRunner& r = runner();
  const int tid = linear_tid();
  const int base = tid - tid % kWarpSize;
  std::memcpy(&r.warp_slots[tid], &value, sizeof(T));
  syncwarp();
  T out = value;
  const int src = base + src_lane;
  if (src_lane >= 0 && src_lane < kWarpSize && src < r.num_threads()) std::memcpy(&out, &r.warp_slots[src], sizeof(T));
  syncwarp();
  return out;
}

inline int lane_id() { return linear_tid() % kWarpSize; }

inline void check_width(int width) {
  if (width <= 0 || width > kWarpSize || (width & (width - 1)) != 0)
    throw EmulationError("shuffle width must be a power of two <= 32");
}

template <typename T>
T shfl_xor_sync(unsigned, T v, int lane_mask, int width = kWarpSize) {
  check_width(width);
  const int lane = lane_id();
  const int src = lane ^ lane_mask;
  // Outside the caller's segment of `width` lanes CUDA returns the caller's own value.
  const bool same_segment = (src / width) == (lane / width);
  return shuffle(v, same_segment ? src : lane);
}

template <typename T>
T shfl_down_sync(unsigned, T v, unsigned delta, int width = kWarpSize) {
  check_width(width);
  const int lane = lane_id();
  const int src = lane + static_cast<int>(delta);
  return shuffle(v, (src / width) == (lane / width) ? src : lane);
}

template <typename T>
T shfl_sync(unsigned, T v, int src_lane, int width = kWarpSize) {
  check_width(width);
  const int lane = lane_id();
  return shuffle(v, (lane / width) * width + (src_lane % width));
}

template <typename T>
T atomic_add(T* address, T value) {
  static_assert(std::is_arithmetic<T>::value, "atomicAdd of this type");
  T old, desired;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  do {
    desired = old + value;
  } while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

}  // namespace df_emu

using df_emu::dim3;
using df_emu::uint3;

#define threadIdx (::df_emu::self().thread_idx)
#define blockIdx (::df_emu::runner().block_idx)
#define blockDim (::df_emu::runner().block_dim)
#define gridDim (::df_emu::runner().grid_dim)
#define warpSize (::df_emu::kWarpSize)

inline void __syncthreads() { df_emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { df_emu::syncwarp(); }
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return df_emu::shfl_xor_sync(mask, v, lane_mask, width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return df_emu::shfl_down_sync(mask, v, delta, width);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return df_emu::shfl_sync(mask, v, src, width);
}
template <typename T>
T atomicAdd(T* address, T value) {
  return df_emu::atomic_add(address, value);
}
// glibc declares __expf/__logf itself, so the fast-math intrinsics are macros here (<cmath> is included above).
#define __expf(x) (::expf(x))
#define __logf(x) (::logf(x))
