#include "kl_balance.cuh"
