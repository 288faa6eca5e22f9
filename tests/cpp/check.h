// A minimal assertion helper for the standalone ctest programs (no test framework needed).
#pragma once

#include <cmath>
#include <cstdio>

inline int g_failures = 0;

#define EXPECT(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::printf("%s:%d: EXPECT failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                         \
    }                                                                       \
  } while (0)

#define EXPECT_NEAR(a, b, tol)                                                                                 \
  do {                                                                                                        \
    const double a_ = (a), b_ = (b);                                                                          \
    if (!(std::fabs(a_ - b_) <= (tol))) {                                                                     \
      std::printf("%s:%d: EXPECT_NEAR failed: %s = %.17g vs %s = %.17g\n", __FILE__, __LINE__, #a, a_, #b, b_); \
      ++g_failures;                                                                                           \
    }                                                                                                         \
  } while (0)

inline int report(const char* name) {
  if (g_failures) std::printf("%s: %d check(s) failed\n", name, g_failures);
  else std::printf("%s: all checks passed\n", name);
  return g_failures ? 1 : 0;
}
