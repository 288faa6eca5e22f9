// Registers dreamer_fast::emulated::<op> as the CPU kernels of the `dreamer_fast_emu` library (schemas in csrc/ops.cpp),
// plus `launched_kernels()`, the names of the emulated kernels launched so far (tests check every kernel ran), and
// `set_schedule(name)`, the emulator's thread schedule for the launches after it ("in-order" or "reverse"; it returns
// the previous one; see csrc/emulation/emulator.h).
#include <torch/library.h>

#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "../emulation/emulator.h"
#include "../ops.h"

namespace {

std::vector<std::string> launched_kernels() {
  auto& log = df_emu::launch_log();
  std::lock_guard<std::mutex> lock(log.mutex);
  return {log.names.begin(), log.names.end()};
}

std::string set_schedule(const std::string& name) {
  using df_emu::Schedule;
  const std::string previous = df_emu::schedule() == Schedule::kInOrder ? "in-order" : "reverse";
  TORCH_CHECK(name == "in-order" || name == "reverse", "set_schedule: \"in-order\" or \"reverse\", got \"", name,
              "\"");
  df_emu::set_schedule(name == "in-order" ? Schedule::kInOrder : Schedule::kReverse);
  return previous;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dreamer_fast_emu, m) {
  m.def("launched_kernels() -> str[]", &launched_kernels);
  m.def("set_schedule(str name) -> str", &set_schedule);
}

TORCH_LIBRARY_IMPL(dreamer_fast_emu, CPU, m) {
  DF_REGISTER_KERNELS(m, dreamer_fast::emulated);
}
