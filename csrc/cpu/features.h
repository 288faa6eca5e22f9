// What the CPU can do, read once, and the profile in force: the one place every CPU path choice asks (the GEMM
// library, oneDNN's bf16 packing, whether bf16 autocast pays, the vector width of our own kernels).
//
// The features come from the same queries the libraries that then run use: torch's cpuinfo table
// (at::cpu::get_cpu_capabilities), ATen's kernel capability (at::get_cpu_capability, which follows
// $ATEN_CPU_CAPABILITY) and oneDNN's own bf16 check (mkldnn::_is_mkldnn_bf16_supported, which follows
// $ONEDNN_MAX_CPU_ISA). So a path chosen here is never one the library below refuses.
//
// $DREAMER_FAST_CPU_PROFILE (or set_cpu_profile) caps the profile: "avx2" turns off every AVX-512, bf16 and AMX path
// of ours on any CPU, so the lowest class is testable everywhere; "avx512" turns off AMX; "auto" (default) is the
// detected profile. A cap never raises the profile above what the CPU and torch have.
#pragma once

#include <string>

namespace dreamer_fast::cpu {

enum class Profile : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };

struct Features {
  std::string vendor;           // cpuid's vendor string, e.g. "GenuineIntel", "AuthenticAMD" (empty off x86)
  std::string name;             // the CPU's model name as cpuinfo reads it
  bool avx2 = false;            // AVX2 + FMA (x86-64-v3)
  bool avx512 = false;          // AVX-512 F, BW, VL and DQ (x86-64-v4)
  bool avx512_bf16 = false;     // AVX512-BF16: native bf16 dot products
  bool amx_bf16 = false;        // AMX tiles with bf16
  bool avx_ne_convert = false;  // AVX-NE-CONVERT (oneDNN's bf16 path on AVX2-class CPUs)
  bool onednn_bf16 = false;     // oneDNN runs bf16 primitives (its check, under the profile)
  Profile detected = Profile::kBaseline;  // what the CPU, ATen's capability and oneDNN allow
  Profile profile = Profile::kBaseline;   // detected, capped by $DREAMER_FAST_CPU_PROFILE / set_cpu_profile
};

// The features under the profile in force (flags above the profile read false).
const Features& features();

// bf16 GEMMs in hardware (AVX512-BF16 or AMX) that oneDNN will use: where bf16 autocast pays on the CPU.
bool native_bf16_gemm();

// MKL dispatches its widest kernels (AVX-512, AMX) only on Intel CPUs and takes its AVX2 code elsewhere.
bool mkl_full_isa();

// "baseline" | "avx2" | "avx512" | "amx".
const char* profile_name(Profile p);

}  // namespace dreamer_fast::cpu
