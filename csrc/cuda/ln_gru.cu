#include "ln_gru.cuh"
