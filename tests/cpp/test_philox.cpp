// Standalone test of csrc/include/dreamer_fast/philox.h: Random123 known answers and the uniform conversion.
//   g++ -std=c++20 -O2 -Icsrc/include tests/cpp/test_philox.cpp -o /tmp/p && /tmp/p
#include <cstdio>

#include "dreamer_fast/philox.h"

using dreamer_fast::Philox4x32;

static int failures = 0;

static void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

static bool equal(const Philox4x32& a, const Philox4x32& b) {
  return a.v[0] == b.v[0] && a.v[1] == b.v[1] && a.v[2] == b.v[2] && a.v[3] == b.v[3];
}

int main() {
  using namespace dreamer_fast;
  // Known-answer tests from Random123 (kat_vectors: philox4x32 10 rounds).
  expect(equal(philox4x32_10(Philox4x32{{0, 0, 0, 0}}, 0, 0),
               Philox4x32{{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}),
         "KAT counter=0 key=0");
  const uint32_t f = 0xffffffffu;
  expect(equal(philox4x32_10(Philox4x32{{f, f, f, f}}, f, f),
               Philox4x32{{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}),
         "KAT counter=ones key=ones");

  // The uniform uses the top 24 bits: 0 -> 0, all ones -> 1 - 2^-24 (< 1 in float32 too), same in both precisions.
  expect(uniform_from_bits<float>(0u) == 0.0f, "uniform(0) == 0");
  expect(uniform_from_bits<float>(0xffffffffu) == 1.0f - 1.0f / 16777216.0f, "uniform(max) == 1 - 2^-24 (float)");
  expect(uniform_from_bits<float>(0xffffffffu) < 1.0f, "uniform(max) < 1 (float)");
  expect(uniform_from_bits<double>(0xffffffffu) == 1.0 - 1.0 / 16777216.0, "uniform(max) == 1 - 2^-24 (double)");
  expect(uniform_from_bits<double>(0x800000ffu) == 0.5, "uniform ignores the low 8 bits");

  // philox_uniform: counter from the index, key from the seed (a negative int64 seed keeps its two's complement bits).
  expect(philox_uniform<float>(0, 0) == uniform_from_bits<float>(0x6627e8d5u), "philox_uniform(seed=0, index=0)");
  const Philox4x32 c{{123u, 7u, 0u, 0u}};
  const uint64_t seed = 0xfedcba9876543210ull, index = (7ull << 32) | 123u;
  expect(philox_uniform<double>(seed, index) ==
             uniform_from_bits<double>(philox4x32_10(c, 0x76543210u, 0xfedcba98u).v[0]),
         "philox_uniform splits index and seed into lo/hi words");
  expect(static_cast<double>(philox_uniform<float>(seed, index)) == philox_uniform<double>(seed, index),
         "float32 and float64 draw the same uniform");
  expect(philox_uniform<double>(seed, index) != philox_uniform<double>(seed + 1, index), "the seed changes the draw");
  expect(philox_uniform<double>(seed, index) != philox_uniform<double>(seed, index + 1), "the index changes the draw");

  // Uniformity sanity: mean and a 16-bin histogram of 2^20 draws.
  const int n = 1 << 20;
  double sum = 0;
  int bins[16] = {0};
  for (int i = 0; i < n; ++i) {
    const double u = philox_uniform<double>(42, i);
    expect(u >= 0.0 && u < 1.0, "uniform in [0, 1)");
    sum += u;
    ++bins[static_cast<int>(u * 16)];
  }
  expect(sum / n > 0.499 && sum / n < 0.501, "mean of 2^20 uniforms within 0.001 of 1/2");
  double chi2 = 0;
  for (int b = 0; b < 16; ++b) chi2 += (bins[b] - n / 16.0) * (bins[b] - n / 16.0) / (n / 16.0);
  expect(chi2 < 50.0, "16-bin chi-square < 50 (p ~ 1e-5 for 15 dof)");

  if (failures == 0) std::printf("test_philox: all passed\n");
  return failures == 0 ? 0 : 1;
}
