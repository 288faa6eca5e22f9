// cpu/features.h: detection once, the profile cap, and the ops `cpu_features() -> str` and
// `set_cpu_profile(str profile) -> str`.
#include "features.h"

#include "private_ops.h"

#include <ATen/Version.h>
#include <ATen/cpu/Utils.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace dreamer_fast::cpu {
namespace {

std::string cpuid_vendor() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return "";
  char vendor[13];
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  vendor[12] = '\0';
  return vendor;
#else
  return "";
#endif
}

// oneDNN's own answer to "can you run bf16 here" (false where this torch has no oneDNN or not the op).
bool onednn_bf16_supported() {
  const auto& op = private_op(PrivateOp::kOnednnBf16Supported);
  return op && op->typed<bool()>().call();
}

// ATen's vectorised kernels' level ("AVX512", "AVX2", "DEFAULT", or an ARM name, which counts as the baseline here).
Profile aten_profile() {
  const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512") return Profile::kAmx;  // ATen has no AMX level: AVX512 allows everything above it
  if (cap == "AVX2") return Profile::kAvx2;
  return Profile::kBaseline;
}

Features detect() {
  const auto caps = at::cpu::get_cpu_capabilities();
  auto flag = [&](const char* key) {
    const auto it = caps.find(key);
    return it != caps.end() && it->second.isBool() && it->second.toBool();
  };
  Features f;
  f.vendor = cpuid_vendor();
  const auto name = caps.find("cpu_name");
  if (name != caps.end() && name->second.isString()) f.name = name->second.toStringRef();
  f.avx2 = flag("avx2") && flag("fma3");
  f.avx512 = f.avx2 && flag("avx512_f") && flag("avx512_bw") && flag("avx512_vl") && flag("avx512_dq");
  f.avx512_bf16 = f.avx512 && flag("avx512_bf16");
  f.amx_bf16 = f.avx512 && flag("amx_tile") && flag("amx_bf16");
  f.avx_ne_convert = f.avx2 && flag("avx_ne_convert");
  f.onednn_bf16 = onednn_bf16_supported();
  const Profile cpu = f.amx_bf16 ? Profile::kAmx : f.avx512 ? Profile::kAvx512 : f.avx2 ? Profile::kAvx2
                                                                                        : Profile::kBaseline;
  f.detected = std::min(cpu, aten_profile());
  return f;
}

// `f` with every flag above profile `p` off.
Features capped(Features f, Profile p) {
  f.profile = std::min(f.detected, p);
  if (f.profile < Profile::kAmx) f.amx_bf16 = false;
  if (f.profile < Profile::kAvx512) {
    f.avx512 = f.avx512_bf16 = false;
    f.onednn_bf16 = f.onednn_bf16 && f.avx_ne_convert;  // what oneDNN allows on an AVX2-class CPU
  }
  if (f.profile < Profile::kAvx2) f.avx2 = f.avx_ne_convert = f.onednn_bf16 = false;
  return f;
}

// The cap: a profile, or kNoCap for "auto".
constexpr int kNoCap = static_cast<int>(Profile::kAmx) + 1;

int parse(const std::string& s, const char* source) {
  if (s == "auto" || s.empty()) return kNoCap;
  for (Profile p : {Profile::kBaseline, Profile::kAvx2, Profile::kAvx512, Profile::kAmx}) {
    if (s == profile_name(p)) return static_cast<int>(p);
  }
  TORCH_CHECK(false, source, " must be \"auto\", \"baseline\", \"avx2\", \"avx512\" or \"amx\", got \"", s, "\"");
}

// The four capped views, built once; the cap in force picks one.
const std::array<Features, 4>& table() {
  static const std::array<Features, 4> t = [] {
    const Features f = detect();
    return std::array<Features, 4>{capped(f, Profile::kBaseline), capped(f, Profile::kAvx2),
                                   capped(f, Profile::kAvx512), capped(f, Profile::kAmx)};
  }();
  return t;
}

std::atomic<int>& cap() {
  static std::atomic<int> c{[] {
    const char* env = std::getenv("DREAMER_FAST_CPU_PROFILE");
    return parse(env ? env : "", "$DREAMER_FAST_CPU_PROFILE");
  }()};
  return c;
}

std::string cap_name(int c) { return c == kNoCap ? "auto" : profile_name(Profile(c)); }

std::string set_cpu_profile(const std::string& profile) {
  return cap_name(cap().exchange(parse(profile, "set_cpu_profile: `profile`")));
}

// "key=value" pairs, one per line, for dreamer_fast.cpu_features().
std::string describe() {
  const Features& f = features();
  std::ostringstream s;
  s << "vendor=" << f.vendor << "\nname=" << f.name << "\navx2=" << f.avx2 << "\navx512=" << f.avx512
    << "\navx512_bf16=" << f.avx512_bf16 << "\namx_bf16=" << f.amx_bf16 << "\navx_ne_convert=" << f.avx_ne_convert
    << "\nonednn_bf16=" << f.onednn_bf16 << "\ndetected=" << profile_name(f.detected)
    << "\nprofile=" << profile_name(f.profile) << "\ncap=" << cap_name(cap().load())
    << "\naten_capability=" << at::get_cpu_capability() << "\nnative_bf16_gemm=" << native_bf16_gemm()
    << "\nmkl_full_isa=" << mkl_full_isa();
  return s.str();
}

}  // namespace

const char* profile_name(Profile p) {
  switch (p) {
    case Profile::kAvx2: return "avx2";
    case Profile::kAvx512: return "avx512";
    case Profile::kAmx: return "amx";
    default: return "baseline";
  }
}

const Features& features() { return table()[std::min(cap().load(std::memory_order_relaxed), kNoCap - 1)]; }

bool native_bf16_gemm() {
  const Features& f = features();
  return f.onednn_bf16 && (f.avx512_bf16 || f.amx_bf16);
}

bool mkl_full_isa() { return features().vendor == "GenuineIntel"; }

}  // namespace dreamer_fast::cpu

// Process-wide settings, not tensor ops.
TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  m.def("cpu_features() -> str", &dreamer_fast::cpu::describe);
  m.def("set_cpu_profile(str profile) -> str", &dreamer_fast::cpu::set_cpu_profile);
}
