// csrc/emulation/emulator.h: barrier and warp semantics, and the errors it must report.
#include "emulation/emulator.h"

#include <numeric>
#include <string>
#include <vector>

#include "check.h"

using df_emu::EmulationError;

// Block sum through shared memory: correct only if every thread waits at the barriers.
__global__ void block_sum(const int* in, int* out, int n, bool with_barrier) {
  __shared__ int buf[256];
  const int t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  buf[t] = i < n ? in[i] : 0;
  if (with_barrier) __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) buf[t] += buf[t + stride];
    if (with_barrier) __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// Warp sum with xor shuffles (butterfly): every lane ends with the total.
__global__ void warp_sum_xor(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  out[threadIdx.x] = v;
}

// Shuffle down tree: lane 0 ends with the total; also exercises width (segments of 8 lanes).
__global__ void warp_sum_down(const float* in, float* out, int width) {
  float v = in[threadIdx.x];
  for (int d = width / 2; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d, width);
  out[threadIdx.x] = v;
}

__global__ void broadcast_lane(const int* in, int* out, int src) {
  out[threadIdx.x] = __shfl_sync(0xffffffffu, in[threadIdx.x], src);
}

__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 5) return;  // early exit, then a barrier the exited threads never reach
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Two block sums through the same shared slots. Without the trailing barrier a warp that runs ahead overwrites its
// slot with the second sum before warp 0 has read the first: only a schedule that lets warps run ahead shows it.
__global__ void two_block_sums(const int* in, int* out, bool trailing_barrier) {
  __shared__ int partial[8];
  int total[2];
  for (int round = 0; round < 2; ++round) {
    int v = in[threadIdx.x] * (round + 1);
    for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    total[round] = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total[round] += partial[w];
    if (trailing_barrier) __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[0] = total[0];
    out[1] = total[1];
  }
}

// Lane l sums what lanes 0..l stored; without the __syncwarp() it reads lanes that have not stored yet, unless they
// happen to run first (in order, they do).
__global__ void lane_prefix(const int* in, int* out, bool with_syncwarp) {
  __shared__ int buf[32];
  buf[threadIdx.x] = in[threadIdx.x];
  if (with_syncwarp) __syncwarp();
  int c = 0;
  for (int i = 0; i <= static_cast<int>(threadIdx.x); ++i) c += buf[i];
  out[threadIdx.x] = c;
}

__global__ void count_atomic(int* counter) { atomicAdd(counter, 1); }

__global__ void index_3d(int* out) {
  const int bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  out[bid * threads + tid] = bid * 1000 + tid;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const EmulationError& e) {
    return e.what();
  }
  return "";
}

int main() {
  {  // shared-memory reduction over several blocks (blocks run on parallel OpenMP threads)
    const int n = 1000, threads = 256, blocks = (n + threads - 1) / threads;
    std::vector<int> in(n), out(blocks, -1);
    std::iota(in.begin(), in.end(), 1);
    df_emu::launch("block_sum", block_sum, dim3(blocks), dim3(threads), in.data(), out.data(), n, true);
    EXPECT(std::accumulate(out.begin(), out.end(), 0) == n * (n + 1) / 2);
    // Without the barriers thread 0 runs to the end before the others store: the emulator exposes the race.
    std::fill(out.begin(), out.end(), -1);
    df_emu::launch("block_sum_racy", block_sum, dim3(blocks), dim3(threads), in.data(), out.data(), n, false);
    EXPECT(std::accumulate(out.begin(), out.end(), 0) != n * (n + 1) / 2);
  }
  {
    std::vector<float> in(32), out(32);
    for (int i = 0; i < 32; ++i) in[i] = static_cast<float>(i);
    df_emu::launch("warp_sum_xor", warp_sum_xor, dim3(1), dim3(32), in.data(), out.data());
    for (int i = 0; i < 32; ++i) EXPECT(out[i] == 496.0f);
    df_emu::launch("warp_sum_down", warp_sum_down, dim3(1), dim3(32), in.data(), out.data(), 32);
    EXPECT(out[0] == 496.0f);
    df_emu::launch("warp_sum_down8", warp_sum_down, dim3(1), dim3(32), in.data(), out.data(), 8);
    for (int seg = 0; seg < 4; ++seg) EXPECT(out[seg * 8] == 28.0f + 64.0f * seg);  // sum of 8 consecutive ints
  }
  {
    std::vector<int> in(64), out(64);
    std::iota(in.begin(), in.end(), 100);
    df_emu::launch("broadcast_lane", broadcast_lane, dim3(1), dim3(64), in.data(), out.data(), 7);
    for (int i = 0; i < 64; ++i) EXPECT(out[i] == (i < 32 ? 107 : 139));  // per warp
  }
  {
    std::vector<int> out(64, 0);
    const std::string err =
        error_of([&] { df_emu::launch("divergent_barrier", divergent_barrier, dim3(2), dim3(64), out.data()); });
    EXPECT(err.find("__syncthreads() not reached") != std::string::npos);
    EXPECT(err.find("divergent_barrier") != std::string::npos);
  }
  {
    std::vector<float> out(32, 0);
    const std::string err =
        error_of([&] { df_emu::launch("shuffle_after_exit", shuffle_after_exit, dim3(1), dim3(32), out.data()); });
    EXPECT(err.find("lanes of the warp have exited") != std::string::npos);
  }
  {  // schedules: the reverse one (warps and lanes last first, a warp runs ahead) exposes what in-order hides
    using df_emu::Schedule;
    std::vector<int> in(128), out(2);
    std::iota(in.begin(), in.end(), 1);
    const int sum = 128 * 129 / 2;
    for (Schedule s : {Schedule::kInOrder, Schedule::kReverse}) {
      df_emu::set_schedule(s);
      df_emu::launch("two_block_sums", two_block_sums, dim3(3), dim3(128), in.data(), out.data(), true);
      EXPECT(out[0] == sum && out[1] == 2 * sum);
    }
    df_emu::set_schedule(Schedule::kInOrder);
    df_emu::launch("two_block_sums_racy", two_block_sums, dim3(3), dim3(128), in.data(), out.data(), false);
    EXPECT(out[0] == sum && out[1] == 2 * sum);  // in order, every warp reads before any writes again
    df_emu::set_schedule(Schedule::kReverse);
    df_emu::launch("two_block_sums_racy", two_block_sums, dim3(3), dim3(128), in.data(), out.data(), false);
    EXPECT(out[0] != sum);

    std::vector<int> prefix(32);
    for (Schedule s : {Schedule::kInOrder, Schedule::kReverse}) {
      df_emu::set_schedule(s);
      df_emu::launch("lane_prefix", lane_prefix, dim3(1), dim3(32), in.data(), prefix.data(), true);
      for (int l = 0; l < 32; ++l) EXPECT(prefix[l] == (l + 1) * (l + 2) / 2);
    }
    // New values: whichever OS thread runs the block, its shared `buf` holds none of them yet.
    std::vector<int> fresh(32);
    std::iota(fresh.begin(), fresh.end(), 1000);
    const int fresh_sum = 32 * 1000 + 31 * 32 / 2;
    df_emu::launch("lane_prefix_racy", lane_prefix, dim3(1), dim3(32), fresh.data(), prefix.data(), false);
    EXPECT(prefix[31] != fresh_sum);  // lane 31 ran first and read lanes 0..30's stale stores
    df_emu::set_schedule(Schedule::kInOrder);
    df_emu::launch("lane_prefix_racy", lane_prefix, dim3(1), dim3(32), fresh.data(), prefix.data(), false);
    EXPECT(prefix[31] == fresh_sum);  // in order, lanes 0..30 stored first: the missing __syncwarp() is hidden
  }
  {
    int counter = 0;
    df_emu::launch("count_atomic", count_atomic, dim3(7, 3), dim3(33), &counter);
    EXPECT(counter == 7 * 3 * 33);
  }
  {
    const dim3 grid(3, 2, 2), block(4, 3, 2);
    std::vector<int> out(12 * 24, -1);
    df_emu::launch("index_3d", index_3d, grid, block, out.data());
    for (int b = 0; b < 12; ++b)
      for (int t = 0; t < 24; ++t) EXPECT(out[b * 24 + t] == b * 1000 + t);
  }
  EXPECT(!error_of([] { df_emu::launch("too_big", count_atomic, dim3(1), dim3(2048), nullptr); }).empty());
  return report("test_emulator");
}
